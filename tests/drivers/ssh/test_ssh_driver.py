"""The OpenStack-over-SSH driver against the test bed's real OpenSSH server, whose
user runs Debian's ``openstack`` CLI against site-b.

No mocks: every call crosses paramiko to ``sshd`` and, for Glance, the remote
CLI to the bed's Keystone and Glance. The "external host" is this machine, so
tests look at its staging directory (a directory of the test's own) directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from migratio.config import OpenStackSshSite, load_sites
from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
)
from migratio.drivers.registry import open_destination, open_source
from migratio.drivers.ssh.driver import OpenStackSshSiteDriver
from migratio.drivers.ssh.hashes import BLOCK_SIZE, STATE_KEY
from migratio.drivers.ssh.keys import ChangedHostKey, UnknownHostKey
from migratio.drivers.ssh.remote import RemoteHost
from migratio.drivers.ssh.stream import StreamedUpload, openssh_client
from migratio.errors import (
    ConfigError,
    IntegrityError,
    PermanentError,
    ShuttingDown,
    TransientError,
)
from tests.support import glance_peer
from tests.support.payloads import Payload

pytestmark = pytest.mark.testbed

MiB = 1024 * 1024


def bed_settings(testbed: Any, **changes: Any) -> OpenStackSshSite:
    raw = yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())
    raw.update(changes)
    return OpenStackSshSite.model_validate(raw)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def site(testbed: Any, staging: Path) -> Iterator[OpenStackSshSiteDriver]:
    driver = OpenStackSshSiteDriver("site-b-ssh", bed_settings(testbed, staging_dir=str(staging)))
    yield driver
    driver.close()


@pytest.fixture
def site_b(testbed: Any) -> Any:
    return glance_peer.connect("site-b")


class Made:
    """Glance images a test registers on site-b, removed when it ends."""

    def __init__(self, site_b: Any) -> None:
        self.site_b = site_b
        self.ids: list[str] = []

    def cleanup(self) -> None:
        for image_id in self.ids:
            glance_peer.delete(self.site_b, image_id)


@pytest.fixture
def made(site_b: Any) -> Iterator[Made]:
    tracker = Made(site_b)
    yield tracker
    tracker.cleanup()


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha512(path: Path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


def registration(name: str = "ssh driver test", **properties: str) -> Registration:
    return Registration(
        name=name,
        disk_format="raw",
        container_format="bare",
        min_disk=1,
        min_ram=256,
        architecture="x86_64",
        properties={"hw_disk_bus": "scsi", "os_distro": "debian", **properties},
    )


def staged_files(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


class StopAfter(Payload):
    """The daemon's side of a transfer that is stopped (as by SIGTERM) mid-way."""

    def __init__(self, path: Path, sha: str, limit: int) -> None:
        super().__init__(path=path, sha512=sha, size=path.stat().st_size)
        self.limit = limit

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        done = offset
        for chunk in super().chunks(offset):
            if done >= self.limit:
                raise ShuttingDown("daemon stopping")
            done += len(chunk)
            yield chunk


# -- host keys and login ----------------------------------------------------------


def test_an_unknown_host_key_is_refused_before_anything_is_sent(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    driver = OpenStackSshSiteDriver(
        "site-b-ssh",
        bed_settings(testbed, staging_dir=str(staging), known_hosts=str(known_hosts)),
    )
    spec = RecordSpec(str(uuid.uuid4()), "x", "raw", "bare")
    with pytest.raises(UnknownHostKey) as refused:
        driver.create_record(spec)
    message = str(refused.value)
    assert "not in known_hosts" in message and str(known_hosts) in message
    assert "SHA256:" in message and "\n" not in message
    assert isinstance(refused.value, PermanentError)
    with pytest.raises(UnknownHostKey):
        driver.receive(f"staging:{spec.migration_id}", Payload([b"x" * 1024]))
    assert not staging.exists()
    assert known_hosts.read_text() == ""

    missing = tmp_path / "no_known_hosts"
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), known_hosts=str(missing))
    )
    with pytest.raises(PermanentError, match=f"known_hosts {missing} does not exist"):
        driver.create_record(spec)
    assert not staging.exists() and not missing.exists()


def test_a_changed_host_key_is_refused_even_when_unknown_keys_are_accepted(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    settings = bed_settings(testbed, staging_dir=str(staging))
    impostor = paramiko.Ed25519Key.from_private_key_file(str(settings.key_file))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"[127.0.0.1]:{settings.port} {impostor.get_name()} {impostor.get_base64()}\n"
    )
    driver = OpenStackSshSiteDriver(
        "site-b-ssh",
        settings.model_copy(update={"known_hosts": known_hosts, "accept_unknown_host_key": True}),
    )
    with pytest.raises(ChangedHostKey, match="CHANGED") as refused:
        driver.find_record(str(uuid.uuid4()))
    assert "refusing to connect" in str(refused.value)
    assert not staging.exists()


def test_accepting_unknown_host_keys_records_the_key_for_next_time(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "new" / "known_hosts"
    settings = bed_settings(
        testbed,
        staging_dir=str(staging),
        known_hosts=str(known_hosts),
        accept_unknown_host_key=True,
    )
    first = OpenStackSshSiteDriver("site-b-ssh", settings)
    assert first.find_record(str(uuid.uuid4())) is None
    first.close()
    recorded = known_hosts.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{settings.port} ssh-ed25519 ")
    strict = settings.model_copy(update={"accept_unknown_host_key": False})
    second = OpenStackSshSiteDriver("site-b-ssh", strict)
    assert second.find_record(str(uuid.uuid4())) is None
    second.close()
    assert known_hosts.read_text() == recorded


def test_a_key_the_host_does_not_authorize_is_refused_clearly(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), key_file=str(stranger))
    )
    with pytest.raises(PermanentError, match="refused the key") as refused:
        driver.find_record(str(uuid.uuid4()))
    assert str(stranger) in str(refused.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file or directory"),
        (b"this is not a key\n", "not a usable private key"),
    ],
)
def test_a_key_file_that_is_not_a_key_is_a_clear_error(
    testbed: Any, staging: Path, tmp_path: Path, content: bytes | None, problem: str
) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_bytes(content)
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), key_file=str(key))
    )
    with pytest.raises(PermanentError, match=problem) as refused:
        driver.find_record(str(uuid.uuid4()))
    assert f"key_file {key}" in str(refused.value)


def test_a_passphrase_protected_key_is_a_clear_error(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    key = tmp_path / "locked_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)], check=True
    )
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), key_file=str(key))
    )
    with pytest.raises(PermanentError, match="passphrase"):
        driver.find_record(str(uuid.uuid4()))


def test_a_host_that_refuses_connections_is_transient(testbed: Any, staging: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), port=closed_port)
    )
    with pytest.raises(TransientError, match="site site-b-ssh"):
        driver.find_record(str(uuid.uuid4()))


# -- staging: upload, resume, verification ------------------------------------------


def test_an_interrupted_upload_resumes_after_the_last_matching_block(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "payload", 5 * BLOCK_SIZE + 12345)
    digest = sha512(source)
    migration_id = str(uuid.uuid4())
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    assert record.id == f"staging:{migration_id}" and record.status is RecordStatus.OPEN
    assert site.find_record(migration_id) is None  # nothing written yet

    first = StopAfter(source, digest, limit=int(2.5 * BLOCK_SIZE))
    with pytest.raises(ShuttingDown):
        site.receive(record.id, first)
    journal = first.state[STATE_KEY]
    assert len(journal["blocks"]) == 2
    partial = site.find_record(migration_id)
    assert partial is not None and partial.status is RecordStatus.OPEN and partial.sha512 is None

    second = Payload(path=source, sha512=digest, size=source.stat().st_size)
    second.state = first.state
    assert site.receive(record.id, second) == digest
    journal = second.state[STATE_KEY]
    assert journal["attempts"] == [0, 2 * BLOCK_SIZE]
    resent = journal["sent"] - source.stat().st_size
    assert 0 <= resent <= BLOCK_SIZE
    assert staged_files(staging) == [f"{migration_id}.{digest}"]
    assert sha512(staging / f"{migration_id}.{digest}") == digest
    complete = site.get_record(record.id)
    assert complete is not None and complete.sha512 == digest

    # Received again (a crash before the state moved on): nothing is sent.
    third = Payload(path=source, sha512=digest, size=source.stat().st_size)
    assert site.receive(record.id, third) == digest
    assert third.state == {}
    site.remove(record.id)
    assert staged_files(staging) == []
    site.remove(record.id)  # already gone is fine


def test_a_block_changed_on_the_host_is_sent_again(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "payload", 4 * BLOCK_SIZE)
    digest = sha512(source)
    migration_id = str(uuid.uuid4())
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    first = StopAfter(source, digest, limit=3 * BLOCK_SIZE)
    with pytest.raises(ShuttingDown):
        site.receive(record.id, first)
    part = staging / f"{migration_id}.part"
    with part.open("r+b") as tampered:
        tampered.seek(BLOCK_SIZE + 17)
        tampered.write(b"\0")
    second = Payload(path=source, sha512=digest, size=source.stat().st_size)
    second.state = first.state
    assert site.receive(record.id, second) == digest
    assert second.state[STATE_KEY]["attempts"] == [0, BLOCK_SIZE]
    assert sha512(staging / f"{migration_id}.{digest}") == digest
    site.remove(record.id)


def test_a_relative_staging_dir_is_in_the_login_users_home(testbed: Any, tmp_path: Path) -> None:
    relative = f"migratio-test-staging-{uuid.uuid4()}/nested"
    driver = OpenStackSshSiteDriver("site-b-ssh", bed_settings(testbed, staging_dir=relative))
    home_dir = Path.home() / relative
    try:
        migration_id = str(uuid.uuid4())
        record = driver.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
        assert home_dir.is_dir() and oct(home_dir.stat().st_mode & 0o777) == "0o700"
        source = random_file(tmp_path / "payload", MiB)
        digest = driver.receive(record.id, Payload(path=source, sha512=sha512(source)))
        assert staged_files(home_dir) == [f"{migration_id}.{digest}"]
        driver.remove(record.id)
        assert staged_files(home_dir) == []
    finally:
        driver.close()
        shutil.rmtree(home_dir.parent, ignore_errors=True)


def test_a_payload_that_does_not_match_its_sha512_is_refused_and_removed(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "payload", 3 * MiB)
    migration_id = str(uuid.uuid4())
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    wrong = Payload(path=source, sha512="0" * 128, size=source.stat().st_size)
    with pytest.raises(IntegrityError, match="after 3145728 bytes were sent; removed"):
        site.receive(record.id, wrong)
    assert staged_files(staging) == []


@pytest.mark.parametrize("openssh", [True, False], ids=["ssh", "paramiko-sftp"])
def test_a_payload_of_unknown_sha512_is_hashed_while_sent(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path, openssh: bool
) -> None:
    assert site.staging.openssh == openssh_client() is not None
    if not openssh:  # the way where this machine has no ssh client
        site.staging.openssh = None
    source = random_file(tmp_path / "payload", 3 * MiB + 1)
    migration_id = str(uuid.uuid4())
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    assert site.receive(record.id, Payload(path=source)) == sha512(source)
    assert staged_files(staging) == [f"{migration_id}.{sha512(source)}"]
    assert oct((staging / staged_files(staging)[0]).stat().st_mode & 0o777) == "0o600"
    site.remove(record.id)


def test_streamed_bytes_reach_a_staging_path_with_shell_metacharacters_as_they_are(
    testbed: Any, tmp_path: Path
) -> None:
    marker = f"pwned-{uuid.uuid4()}"
    staging = tmp_path / f'st a\'ge "$(touch {marker})";`touch {marker}`'
    driver = OpenStackSshSiteDriver("site-b-ssh", bed_settings(testbed, staging_dir=str(staging)))
    try:
        source = random_file(tmp_path / "payload", 2 * MiB + 3)
        migration_id = str(uuid.uuid4())
        record = driver.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
        assert driver.receive(record.id, Payload(path=source, sha512=sha512(source))) == sha512(
            source
        )
        assert driver.staging.openssh is not None  # ssh carried the bytes
        assert staged_files(staging) == [f"{migration_id}.{sha512(source)}"]
        assert not (Path.home() / marker).exists() and not list(tmp_path.glob(f"**/{marker}"))
    finally:
        driver.close()


def test_the_ssh_client_refuses_a_host_key_other_than_the_pinned_one(
    testbed: Any, staging: Path, tmp_path: Path
) -> None:
    settings = bed_settings(testbed, staging_dir=str(staging))
    # known_hosts pins another key for the host's address (the bed's client key).
    address = f"[{settings.host}]:{settings.port}"
    other = Path(f"{settings.key_file}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{address} {' '.join(other)}\n")
    host = RemoteHost("site-b-ssh", settings.model_copy(update={"known_hosts": known_hosts}))
    client = openssh_client()
    assert client is not None
    staging.mkdir()
    upload = StreamedUpload(client, host, str(staging / "x.part"), 0)
    try:
        with pytest.raises(PermanentError, match="Host key verification failed"):
            upload.write(b"x" * MiB)
            upload.finish(timeout=30)
    finally:
        upload.close()
    assert staged_files(staging) == []


# -- registration through the remote CLI ----------------------------------------------


def test_record_lifecycle_register_find_copy_and_remove(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path, made: Made, site_b: Any
) -> None:
    source = random_file(tmp_path / "payload", 2 * MiB)
    digest = sha512(source)
    migration_id = str(uuid.uuid4())
    source_uuid = str(uuid.uuid4())
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    site.receive(record.id, Payload(path=source, sha512=digest, size=2 * MiB))
    provenance = {
        SOURCE_UUID: source_uuid,
        "source_cs": "site-a",
        SOURCE_T: "site-a",
        SOURCE_SHA512: digest,
    }
    tagged = dataclasses.replace(registration("lifecycle", **provenance), tags=("golden", "ssh"))
    registered = site.register(record.id, tagged)
    made.ids.append(registered.id)
    assert registered.is_complete and registered.sha512 == digest and registered.size == 2 * MiB
    assert staged_files(staging) == []

    image = glance_peer.get(site_b, registered.id)
    assert image is not None
    expected = {
        "name": "lifecycle",
        "disk_format": "raw",
        "container_format": "bare",
        "min_disk": 1,
        "min_ram": 256,
        "architecture": "x86_64",
        "hw_disk_bus": "scsi",
        "os_distro": "debian",
        MIGRATION_ID: migration_id,
        "os_hash_value": digest,
        **provenance,
    }
    assert {key: image.get(key) for key in expected} == expected
    assert (sorted(image["tags"]), image["visibility"]) == (["golden", "ssh"], "private")

    # Re-entered (the state did not record the outcome): the same image.
    assert site.register(record.id, registration("lifecycle", **provenance)).id == registered.id
    assert site.register(registered.id, registration("lifecycle", **provenance)).id == (
        registered.id
    )
    found = site.find_record(migration_id)
    assert found is not None and found.id == registered.id and found.is_complete

    copy = site.find_copy(Provenance(source_uuid, "site-a", digest), "raw")
    assert copy is not None and copy.id == registered.id
    assert site.find_copy(Provenance(source_uuid, "site-a", digest), "qcow2") is None
    assert site.find_copy(Provenance(source_uuid, "site-c", digest), "raw") is None

    site.remove(registered.id)
    assert glance_peer.get(site_b, registered.id) is None
    site.remove(registered.id)  # already gone is fine
    assert site.get_record(registered.id) is None


def test_an_interrupted_registration_is_replaced_by_a_whole_one(
    site: OpenStackSshSiteDriver, staging: Path, tmp_path: Path, made: Made, site_b: Any
) -> None:
    source = random_file(tmp_path / "payload", MiB)
    digest = sha512(source)
    migration_id = str(uuid.uuid4())
    # What a registration killed half-way leaves: an image with no data yet.
    half = site_b.image.create_image(
        name="half", disk_format="raw", container_format="bare", allow_duplicates=True,
        **{MIGRATION_ID: migration_id},
    )  # fmt: skip
    made.ids.append(half.id)
    record = site.create_record(RecordSpec(migration_id, "x", "raw", "bare"))
    incomplete = site.get_record(half.id)
    assert incomplete is not None and incomplete.status is RecordStatus.BROKEN
    site.receive(record.id, Payload(path=source, sha512=digest, size=MiB))
    registered = site.register(record.id, registration("whole"))
    made.ids.append(registered.id)
    assert registered.id != half.id and registered.sha512 == digest
    assert glance_peer.get(site_b, half.id) is None
    assert [i["id"] for i in glance_peer.find(site_b, **{MIGRATION_ID: migration_id})] == [
        registered.id
    ]


def test_names_and_values_with_shell_metacharacters_reach_glance_as_they_are(
    site: OpenStackSshSiteDriver, tmp_path: Path, made: Made, site_b: Any
) -> None:
    marker = tmp_path / "pwned"
    names = [
        f'x"; touch {marker}; echo "',
        f"--file=/etc/passwd $(touch {marker}) `touch {marker}` 'q' \\ \n\tline Ünïcødé 日本語",
    ]
    source = random_file(tmp_path / "payload", MiB)
    digest = sha512(source)
    for name in names:
        migration_id = str(uuid.uuid4())
        record = site.create_record(RecordSpec(migration_id, name, "raw", "bare"))
        site.receive(record.id, Payload(path=source, sha512=digest, size=MiB))
        value = f"$(touch {marker});`touch {marker}`|touch {marker}&&x=y ✓"
        registered = site.register(record.id, registration(name, os_note=value))
        made.ids.append(registered.id)
        image = glance_peer.get(site_b, registered.id)
        assert image is not None
        assert (image["name"], image["os_note"]) == (name, value)
    assert not marker.exists()


def test_a_remote_cli_error_is_permanent_and_names_the_cause(testbed: Any, staging: Path) -> None:
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), cloud="no-such-cloud")
    )
    with pytest.raises(PermanentError, match="no-such-cloud was not found"):
        driver.find_copy(Provenance(str(uuid.uuid4()), "site-a", "0" * 128), "raw")


def test_an_unreachable_keystone_behind_the_host_is_transient(testbed: Any, staging: Path) -> None:
    command = "/usr/bin/openstack --os-auth-url http://127.0.0.1:9/v3"
    driver = OpenStackSshSiteDriver(
        "site-b-ssh", bed_settings(testbed, staging_dir=str(staging), openstack_command=command)
    )
    with pytest.raises(TransientError, match="Unable to establish connection"):
        driver.find_record(str(uuid.uuid4()))


def test_a_remote_command_that_does_not_finish_in_time_is_transient_and_stopped(
    testbed: Any, staging: Path
) -> None:
    tag = f"migratio-test-{uuid.uuid4()}"
    command = f"python3 -c 'import time; time.sleep(60)  # {tag}'"
    driver = OpenStackSshSiteDriver(
        "site-b-ssh",
        bed_settings(testbed, staging_dir=str(staging), openstack_command=command, timeout=2),
    )
    with pytest.raises(TransientError, match="did not finish in time"):
        driver.find_copy(Provenance(str(uuid.uuid4()), "site-a", "0" * 128), "raw")
    # The command ends with its session: nothing goes on running on the host.
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", tag], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{tag} still runs on the host"
        time.sleep(0.1)


def test_a_missing_openstack_command_is_permanent(testbed: Any, staging: Path) -> None:
    driver = OpenStackSshSiteDriver(
        "site-b-ssh",
        bed_settings(testbed, staging_dir=str(staging), openstack_command="/nonexistent/os"),
    )
    with pytest.raises(PermanentError, match="cannot run /nonexistent/os: No such file"):
        driver.find_copy(Provenance(str(uuid.uuid4()), "site-a", "0" * 128), "raw")


def test_the_site_is_not_a_source(testbed: Any) -> None:
    sites = load_sites(testbed.sites_dir)
    with pytest.raises(ConfigError, match="openstack-ssh sites are destinations only"):
        open_source(sites["site-b-ssh"])


def test_open_site_builds_the_ssh_driver_from_the_bed_site_file(testbed: Any) -> None:
    sites = load_sites(testbed.sites_dir)
    driver = open_destination(sites["site-b-ssh"])
    assert isinstance(driver, OpenStackSshSiteDriver)
    assert driver.required_disk_format is None and driver.wants_file is False
    driver.close()
