"""The OpenStack driver against the real test bed: Keystone and two Glance sites.

No mocks: every call goes through openstacksdk and keystoneauth to a Glance API
(``testbed`` comes from conftest.py and puts the bed's clouds.yaml in the
environment). Images made here are removed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import testbed_lib
import yaml

from migratio.config import OpenStackSite, load_sites
from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    DestinationImage,
    ImageStatus,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
)
from migratio.drivers.openstack import transport
from migratio.drivers.openstack.driver import OpenStackSiteDriver
from migratio.drivers.registry import open_destination, open_source
from migratio.errors import (
    ImageNotFound,
    PermanentError,
    ShuttingDown,
    TransientError,
    UnsafeImage,
)
from tests.support import glance_peer
from tests.support.payloads import Payload

pytestmark = pytest.mark.testbed

MiB = 1024 * 1024
AWKWARD_NAME = 'it\'s "$(touch /tmp/pwned)" `id`; rm -rf / && echo $HOME\n\tÜmlaut 日本語 ✓ ∑'


# -- fixtures ---------------------------------------------------------------------


def _settings(cloud: str, disk_format: str = "keep", timeout: float = 60.0) -> OpenStackSite:
    return OpenStackSite.model_validate(
        {"type": "openstack", "cloud": cloud, "disk_format": disk_format, "timeout": timeout}
    )


@pytest.fixture(scope="module")
def site_a(testbed: Any) -> Iterator[OpenStackSiteDriver]:
    driver = OpenStackSiteDriver("site-a", _settings("site-a"))
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def site_b(testbed: Any) -> Iterator[OpenStackSiteDriver]:
    driver = OpenStackSiteDriver("site-b", _settings("site-b"))
    yield driver
    driver.close()


class Images:
    """Images a test creates, removed when it ends (even when it fails)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.test = request.node.name
        self.made: list[tuple[OpenStackSiteDriver, str]] = []

    def record(
        self,
        site: OpenStackSiteDriver,
        name: str = "",
        disk_format: str = "raw",
        migration_id: str | None = None,
    ) -> DestinationImage:
        spec = RecordSpec(
            migration_id=migration_id or str(uuid.uuid4()),
            name=name or f"migratio-test {self.test}",
            disk_format=disk_format,
            container_format="bare",
        )
        created = site.create_record(spec)
        self.made.append((site, created.id))
        return created

    def image(
        self,
        site: OpenStackSiteDriver,
        data: bytes,
        registration: Registration | None = None,
        disk_format: str = "raw",
        migration_id: str | None = None,
    ) -> DestinationImage:
        """An active image holding ``data``, registered like a migrated copy."""
        created = self.record(site, disk_format=disk_format, migration_id=migration_id)
        site.receive(created.id, Payload(_chunks(data, MiB)))
        return site.register(created.id, registration or _registration(data, disk_format))

    def remove_all(self) -> None:
        for site, image_id in reversed(self.made):
            site.remove(image_id)


@pytest.fixture
def images(request: pytest.FixtureRequest, testbed: Any) -> Iterator[Images]:
    made = Images(request)
    yield made
    made.remove_all()


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _registration(data: bytes, disk_format: str = "raw", **changes: Any) -> Registration:
    fields: dict[str, Any] = {
        "name": "migratio-test copy",
        "disk_format": disk_format,
        "container_format": "bare",
        "min_disk": 1,
        "min_ram": 256,
        "architecture": "x86_64",
        "properties": {
            SOURCE_UUID: str(uuid.uuid4()),
            SOURCE_T: "site-a",
            SOURCE_SHA512: hashlib.sha512(data).hexdigest(),
            "hw_disk_bus": "virtio",
        },
    }
    fields.update(changes)
    return Registration(**fields)


def _qcow2(tmp_path: Path, size: str = "16M") -> bytes:
    """A real qcow2 file: newer Glance releases reject data that is not the declared format."""
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cloud_variant(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: Any
) -> str:
    """A clouds.yaml entry like site-a's with some settings changed; returns its name."""
    clouds = yaml.safe_load(Path(testbed.env["OS_CLIENT_CONFIG_FILE"]).read_text())
    entry = yaml.safe_load(yaml.safe_dump(clouds["clouds"]["site-a"]))
    for key, value in changes.items():
        if key.startswith("auth."):
            entry["auth"][key.removeprefix("auth.")] = value
        else:
            entry[key] = value
    clouds["clouds"]["variant"] = entry
    path = tmp_path / "clouds.yaml"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(clouds))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return "variant"


class _Answering(BaseHTTPRequestHandler):
    """An HTTP server that answers every request with one fixed status."""

    status = 503

    def _answer(self) -> None:
        body = b"<html><body><h1>Service Unavailable</h1>\nback soon</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _answering(status: int) -> Iterator[str]:
    with _serving(type("Handler", (_Answering,), {"status": status})) as endpoint:
        yield endpoint


class _NotGlance(_Answering):
    """Something else behind the image endpoint: every answer is a version document."""

    def _answer(self) -> None:
        address = self.server.server_address
        assert isinstance(address, tuple)
        port = address[1]
        body = json.dumps(
            {
                "versions": [
                    {
                        "id": "v1.0",
                        "status": "DEPRECATED",
                        "links": [{"rel": "self", "href": f"http://127.0.0.1:{port}/v1/"}],
                    }
                ]
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _silent() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def _cutting_proxy(upstream: str, limit: int) -> Iterator[str]:
    """A TCP proxy that drops each connection after ``limit`` bytes towards the client."""
    target = urllib.parse.urlsplit(upstream)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while not stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if budget is not None and sent + len(data) > budget:
                    sink.sendall(data[: budget - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((target.hostname, target.port))
            threading.Thread(target=pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, limit), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _one_line(error: BaseException, *words: str) -> None:
    message = str(error)
    assert "\n" not in message
    for word in words:
        assert word in message


# -- source -------------------------------------------------------------------------


def test_describe_reports_glance_metadata_and_copies_only_hw_os_and_img_properties(
    site_a: OpenStackSiteDriver, images: Images
) -> None:
    data = os.urandom(3 * MiB + 5)
    made = images.record(site_a)
    site_a.receive(made.id, Payload(_chunks(data, MiB)))
    extra = {
        "hw_disk_bus": "scsi",
        "hw_scsi_model": "virtio-scsi",
        "os_distro": "debian",
        "os_type": "linux",
        "img_config_drive": "mandatory",
        "owner_note": "not copied",
        "source_cs": "not copied",
    }
    site_a.register(made.id, _registration(data, properties=extra, name="describe me"))

    image = site_a.describe(made.id)

    assert image.id == made.id
    assert image.name == "describe me"
    assert image.status is ImageStatus.AVAILABLE and image.site_status == "active"
    assert (image.disk_format, image.container_format) == ("raw", "bare")
    assert image.size == len(data)
    assert image.md5 == hashlib.md5(data).hexdigest()  # noqa: S324 (Glance's checksum)
    assert image.sha512 == hashlib.sha512(data).hexdigest()
    assert (image.min_disk, image.min_ram, image.architecture) == (1, 256, "x86_64")
    assert dict(image.properties) == {
        "img_config_drive": "mandatory",
        "hw_disk_bus": "scsi",
        "hw_scsi_model": "virtio-scsi",
        "os_distro": "debian",
        "os_type": "linux",
    }


def test_describe_an_image_another_client_made(site_a: OpenStackSiteDriver, tmp_path: Path) -> None:
    """openstacksdk's create_image adds owner_specified.* and types hw_* values itself."""
    path = tmp_path / "disk.qcow2"
    path.write_bytes(_qcow2(tmp_path))
    conn = glance_peer.connect("site-a")
    image_id = glance_peer.upload(
        conn,
        path,
        name="made elsewhere",
        hw_cpu_cores="2",
        hw_rng_model="virtio",
        os_require_quiesce="yes",
        note="not copied",
    )
    try:
        image = site_a.describe(image_id)
    finally:
        glance_peer.delete(conn, image_id)
        conn.close()
    assert image.disk_format == "qcow2"
    assert image.sha512 == hashlib.sha512(path.read_bytes()).hexdigest()
    assert image.virtual_size == 16 * MiB
    assert dict(image.properties) == {
        "hw_cpu_cores": "2",
        "hw_rng_model": "virtio",
        "os_require_quiesce": "yes",
    }


def test_describe_reports_a_queued_image_as_is(site_a: OpenStackSiteDriver, images: Images) -> None:
    made = images.record(site_a)
    image = site_a.describe(made.id)
    assert image.status is ImageStatus.UNAVAILABLE and image.site_status == "queued"
    assert image.size == 0
    assert image.md5 is None and image.sha512 is None


def test_describe_missing_image_raises_image_not_found(site_a: OpenStackSiteDriver) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(ImageNotFound) as caught:
        site_a.describe(missing)
    _one_line(caught.value, missing, "site-a")


def test_an_id_cannot_reach_another_endpoint(site_a: OpenStackSiteDriver, images: Images) -> None:
    made = images.image(site_a, b"s" * 100)
    for tricky in (f"{made.id}/file", f"{made.id}?x=1", "../images", f"../images/{made.id}"):
        with pytest.raises(ImageNotFound):
            site_a.describe(tricky)
        assert site_a.get_record(tricky) is None
        site_a.remove(tricky)
        with pytest.raises(PermanentError):
            site_a.register(tricky, _registration(b""))
        with pytest.raises(PermanentError):
            site_a.receive(tricky, Payload([b"data"]))
    assert site_a.describe(made.id).size == 100


def test_read_missing_image_raises_image_not_found(site_a: OpenStackSiteDriver) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(ImageNotFound) as caught, site_a.read(missing):
        pass
    _one_line(caught.value, missing, "site-a")


def test_read_streams_the_exact_bytes_in_bounded_chunks(
    site_a: OpenStackSiteDriver, images: Images
) -> None:
    data = os.urandom(5 * MiB + 123)
    made = images.image(site_a, data)

    digest = hashlib.sha512()
    sizes = []
    with site_a.read(made.id) as chunks:
        for chunk in chunks:
            digest.update(chunk)
            sizes.append(len(chunk))

    assert digest.hexdigest() == hashlib.sha512(data).hexdigest() == made.sha512
    assert sum(sizes) == len(data)
    assert max(sizes) <= transport.READ_CHUNK
    assert len(sizes) > 1


@pytest.mark.parametrize("offset", [1, MiB, 3 * MiB + 77])
def test_read_from_an_offset_returns_the_rest(
    site_a: OpenStackSiteDriver, images: Images, offset: int
) -> None:
    data = os.urandom(4 * MiB + 5)
    made = images.image(site_a, data)
    with site_a.read(made.id, offset) as chunks:
        assert b"".join(chunks) == data[offset:]


def test_read_can_stop_early_and_the_site_stays_usable(
    site_a: OpenStackSiteDriver, images: Images
) -> None:
    data = os.urandom(4 * MiB)
    made = images.image(site_a, data)
    with site_a.read(made.id) as chunks:
        first = next(iter(chunks))
    assert data.startswith(first)
    assert site_a.describe(made.id).size == len(data)


def test_a_queued_image_cannot_be_read(site_a: OpenStackSiteDriver, images: Images) -> None:
    made = images.record(site_a)
    with pytest.raises(PermanentError) as caught, site_a.read(made.id) as chunks:
        list(chunks)
    _one_line(caught.value, "site-a")


# -- destination ----------------------------------------------------------------------


def test_required_disk_format_follows_the_settings() -> None:
    assert OpenStackSiteDriver("x", _settings("x")).required_disk_format is None
    assert OpenStackSiteDriver("x", _settings("x", "raw")).required_disk_format == "raw"
    assert OpenStackSiteDriver("x", _settings("x", "qcow2")).required_disk_format == "qcow2"


def test_record_lifecycle_create_find_receive_register_find_copy_remove(
    site_a: OpenStackSiteDriver, site_b: OpenStackSiteDriver, images: Images, tmp_path: Path
) -> None:
    data = _qcow2(tmp_path)
    migration_id = str(uuid.uuid4())
    assert site_b.find_record(migration_id) is None

    record = images.record(site_b, disk_format="qcow2", migration_id=migration_id)
    assert record.status is RecordStatus.OPEN
    assert record.properties[MIGRATION_ID] == migration_id
    assert not any(key.startswith("owner_specified") for key in record.properties)
    assert site_b.find_record(migration_id) == record
    assert site_b.get_record(record.id) == record

    site_b.receive(record.id, Payload(_chunks(data, 64 * 1024)))
    received = site_b.get_record(record.id)
    assert received is not None and received.status is RecordStatus.COMPLETE
    assert received.sha512 == hashlib.sha512(data).hexdigest()

    registration = _registration(data, "qcow2")
    provenance = Provenance(
        source_uuid=registration.properties[SOURCE_UUID],
        source_site="site-a",
        source_sha512=registration.properties[SOURCE_SHA512],
    )
    assert site_b.find_copy(provenance, "qcow2") is None  # not registered yet
    copy = site_b.register(record.id, registration)
    assert copy.is_complete
    assert copy.size == len(data)
    assert copy.sha512 == hashlib.sha512(data).hexdigest()
    for key, value in registration.properties.items():
        assert copy.properties[key] == value
    assert copy.properties[MIGRATION_ID] == migration_id
    assert site_b.register(record.id, registration) == copy  # idempotent

    assert site_b.find_copy(provenance, "qcow2") == copy
    assert site_b.find_copy(provenance, "raw") is None
    other_sha = Provenance(provenance.source_uuid, "site-a", hashlib.sha512(b"x").hexdigest())
    assert site_b.find_copy(other_sha, "qcow2") is None
    other_site = Provenance(provenance.source_uuid, "site-c", provenance.source_sha512)
    assert site_b.find_copy(other_site, "qcow2") is None
    assert site_a.find_copy(provenance, "qcow2") is None  # the sites are independent

    source = site_b.describe(copy.id)
    assert (source.min_disk, source.min_ram, source.architecture) == (1, 256, "x86_64")

    site_b.remove(record.id)
    assert site_b.get_record(record.id) is None
    assert site_b.find_record(migration_id) is None
    assert site_b.find_copy(provenance, "qcow2") is None
    site_b.remove(record.id)  # already gone: not an error


def test_register_gives_the_copy_tags_protection_and_the_sites_sharing(
    testbed: Any, images: Images
) -> None:
    members = ["9a9a9a9a8b8b7c7c6d6d5e5e5e5e5e5e", "project-b"]
    settings = _settings("site-b").model_copy(
        update={"visibility": "shared", "members": tuple(members)}
    )
    site = OpenStackSiteDriver("site-b-shared", settings)
    data = os.urandom(MiB)
    properties = {**_registration(data).properties, "img_config_drive": "mandatory"}
    registration = _registration(
        data, tags=("golden", "arm"), protected=True, properties=properties
    )
    copy = images.image(site, data, registration)

    described = site.describe(copy.id)
    assert (described.tags, described.protected) == (("arm", "golden"), True)
    assert described.properties["img_config_drive"] == "mandatory"
    raw = site.api.json("GET", site.api.path(copy.id), "test")
    assert raw["visibility"] == "shared"
    listed = site.api.json("GET", site.api.path(copy.id, "members"), "test")["members"]
    assert sorted(member["member_id"] for member in listed) == sorted(members)
    assert site.register(copy.id, registration) == copy  # idempotent: members not re-added

    never = _settings("site-b").model_copy(update={"protected": False})
    unprotected = OpenStackSiteDriver("site-b", never).register(copy.id, registration)
    assert site.describe(unprotected.id).protected is False
    assert site.api.json("GET", site.api.path(copy.id), "test")["visibility"] == "private"
    site.register(copy.id, registration)  # protected again: remove must still work
    site.remove(copy.id)
    assert site.get_record(copy.id) is None
    site.close()


def test_a_stream_from_one_site_into_the_other_keeps_the_bytes(
    site_a: OpenStackSiteDriver, site_b: OpenStackSiteDriver, images: Images
) -> None:
    data = os.urandom(6 * MiB + 1)
    source = images.image(site_a, data)
    record = images.record(site_b)
    with site_a.read(source.id) as chunks:
        site_b.receive(record.id, Payload(chunks))
    copy = site_b.get_record(record.id)
    assert copy is not None and copy.status is RecordStatus.COMPLETE
    assert copy.sha512 == source.sha512 == hashlib.sha512(data).hexdigest()


def test_find_record_pages_through_results_and_prefers_the_active_record(
    site_b: OpenStackSiteDriver, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    migration_id = str(uuid.uuid4())
    # The active one is the oldest, so Glance (newest first) lists it last.
    active = images.image(site_b, b"x" * 1000, migration_id=migration_id)
    for _ in range(4):
        images.record(site_b, migration_id=migration_id)
    monkeypatch.setattr(transport, "PAGE_SIZE", 2)

    found = site_b.find_record(migration_id)

    assert found is not None
    assert found.id == active.id and found.is_complete


def test_find_copy_pages_through_results(
    site_b: OpenStackSiteDriver, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"y" * 1000
    registration = _registration(data)
    copies = {images.image(site_b, data, registration).id for _ in range(3)}
    provenance = Provenance(
        registration.properties[SOURCE_UUID], "site-a", registration.properties[SOURCE_SHA512]
    )
    monkeypatch.setattr(transport, "PAGE_SIZE", 1)
    found = site_b.find_copy(provenance, "raw")
    assert found is not None and found.id in copies


def test_names_and_properties_with_shell_metacharacters_and_unicode_arrive_unchanged(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    record = images.record(site_b, name=AWKWARD_NAME)
    assert site_b.describe(record.id).name == AWKWARD_NAME

    data = b"z" * 4096
    site_b.receive(record.id, Payload([data]))
    properties = {
        "hw_qemu_guest_agent": "yes",
        "os_description": AWKWARD_NAME,
        "path/with~slash": "$(id)",
    }
    registration = _registration(data, name=AWKWARD_NAME + " copy", properties=properties)
    copy = site_b.register(record.id, registration)

    assert copy.properties["os_description"] == AWKWARD_NAME
    assert copy.properties["path/with~slash"] == "$(id)"
    described = site_b.describe(record.id)
    assert described.name == AWKWARD_NAME + " copy"
    assert described.properties["os_description"] == AWKWARD_NAME
    assert not Path("/tmp/pwned").exists()


def test_glance_refuses_4_byte_unicode_as_permanent(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    """Glance (for MySQL's 3-byte utf8) refuses names and values outside the BMP."""
    with pytest.raises(PermanentError) as caught:
        images.record(site_b, name="rocket 🚀")
    _one_line(caught.value, "site-b", "400")


def test_register_refuses_a_record_whose_formats_differ(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    data = b"w" * 2048
    made = images.image(site_b, data)
    with pytest.raises(PermanentError) as caught:
        site_b.register(made.id, _registration(data, "qcow2"))
    _one_line(caught.value, "site-b", "disk_format")


def test_register_a_missing_record_is_permanent(site_b: OpenStackSiteDriver) -> None:
    with pytest.raises(PermanentError) as caught:
        site_b.register(str(uuid.uuid4()), _registration(b""))
    assert not isinstance(caught.value, TransientError)


# -- errors -----------------------------------------------------------------------------


def test_upload_not_matching_the_disk_format_is_refused_as_permanent(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    record = images.record(site_b, disk_format="qcow2")
    try:
        site_b.receive(record.id, Payload(_chunks(os.urandom(2 * MiB), MiB)))
    except PermanentError as exc:
        _one_line(exc, "site-b", record.id)
        return
    # Glance releases before format inspection on upload (Debian 12's 25.x) store it.
    stored = site_b.get_record(record.id)
    assert stored is not None and stored.status is RecordStatus.COMPLETE
    pytest.skip("this Glance does not check uploaded data against disk_format")


def test_uploading_into_an_active_record_is_permanent(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    made = images.image(site_b, b"v" * 1024)
    with pytest.raises(PermanentError) as caught:
        site_b.receive(made.id, Payload([b"more"]))
    _one_line(caught.value, "site-b", "409")


def test_a_property_glance_reserves_is_refused_as_permanent(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    data = b"u" * 1024
    made = images.image(site_b, data)
    registration = _registration(data, properties={"os_glance_import_task": "x"})
    with pytest.raises(PermanentError) as caught:
        site_b.register(made.id, registration)
    _one_line(caught.value, "site-b", "403")


def test_an_unknown_disk_format_is_refused_as_permanent(
    site_b: OpenStackSiteDriver, images: Images
) -> None:
    with pytest.raises(PermanentError) as caught:
        images.record(site_b, disk_format="floppy")
    _one_line(caught.value, "site-b", "400")


@pytest.mark.parametrize("discovery", [True, False], ids=["discovery", "no-discovery"])
def test_an_unreachable_glance_is_transient(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, discovery: bool
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    # With an API version given the SDK skips version discovery and the request
    # itself meets the closed port; without, discovery does.
    version = {} if discovery else {"image_api_version": "2"}
    cloud = _cloud_variant(
        testbed, tmp_path, monkeypatch, image_endpoint_override=endpoint, **version
    )
    driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=5))
    try:
        with pytest.raises(TransientError) as caught:
            driver.describe(str(uuid.uuid4()))
        _one_line(caught.value, "site-x")
        with pytest.raises(TransientError):
            driver.create_record(RecordSpec("m", "n", "raw", "bare"))
    finally:
        driver.close()


def test_a_stopped_glance_behind_the_catalog_is_transient(testbed: Any) -> None:
    """Version discovery of a catalog endpoint that is down makes openstacksdk raise
    NotSupported ("exists but does not have any supported versions"), which was
    once taken for a permanent error and failed migrations in a Glance restart."""
    testbed_lib.stop_service(testbed.dir, "glance-site-b")
    try:
        driver = open_destination(load_sites(testbed.dir / "sites")["site-b"])
        assert isinstance(driver, OpenStackSiteDriver)
        try:
            with pytest.raises(TransientError) as caught:
                driver.describe(str(uuid.uuid4()))
        finally:
            driver.close()
    finally:
        testbed_lib.start_service(testbed.dir, "glance-site-b")
    _one_line(caught.value, "site-b", "did not answer its version discovery (down, restarting")


def test_an_answer_that_is_not_an_image_is_transient(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _serving(_NotGlance) as endpoint:
        cloud = _cloud_variant(testbed, tmp_path, monkeypatch, image_endpoint_override=endpoint)
        driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=5))
        try:
            with pytest.raises(TransientError) as caught:
                driver.describe(str(uuid.uuid4()))
        finally:
            driver.close()
    _one_line(caught.value, "site-x", "not an image")


def test_an_unreachable_keystone_is_transient(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth_url = f"http://127.0.0.1:{_closed_port()}/v3"
    cloud = _cloud_variant(testbed, tmp_path, monkeypatch, **{"auth.auth_url": auth_url})
    driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=5))
    try:
        with pytest.raises(TransientError) as caught:
            driver.describe(str(uuid.uuid4()))
        _one_line(caught.value, "site-x")
    finally:
        driver.close()


def test_bad_credentials_are_permanent_and_the_password_is_not_shown(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "wrong-" + uuid.uuid4().hex
    cloud = _cloud_variant(testbed, tmp_path, monkeypatch, **{"auth.password": password})
    driver = OpenStackSiteDriver("site-x", _settings(cloud))
    try:
        with pytest.raises(PermanentError) as caught:
            driver.describe(str(uuid.uuid4()))
    finally:
        driver.close()
    _one_line(caught.value, "site-x", "authentication failed")
    assert password not in str(caught.value)
    assert not isinstance(caught.value, ImageNotFound)


def test_a_glance_that_does_not_answer_times_out_as_transient(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _silent() as endpoint:
        cloud = _cloud_variant(
            testbed, tmp_path, monkeypatch, image_endpoint_override=endpoint, image_api_version="2"
        )
        driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=1))
        try:
            with pytest.raises(TransientError) as caught:
                driver.describe(str(uuid.uuid4()))
        finally:
            driver.close()
    _one_line(caught.value, "site-x")


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_is_transient(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    with _answering(status) as endpoint:
        cloud = _cloud_variant(
            testbed, tmp_path, monkeypatch, image_endpoint_override=endpoint, image_api_version="2"
        )
        driver = OpenStackSiteDriver("site-x", _settings(cloud))
        try:
            with pytest.raises(TransientError) as caught:
                driver.describe(str(uuid.uuid4()))
            with pytest.raises(TransientError):
                driver.receive(str(uuid.uuid4()), Payload([b"data"]))
        finally:
            driver.close()
    _one_line(caught.value, "site-x", str(status), "back soon")


def test_a_download_cut_midway_is_transient(
    testbed: Any,
    site_a: OpenStackSiteDriver,
    images: Images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = images.image(site_a, os.urandom(8 * MiB))
    with _cutting_proxy(testbed.glance_urls["site-a"], limit=3 * MiB) as endpoint:
        cloud = _cloud_variant(testbed, tmp_path, monkeypatch, image_endpoint_override=endpoint)
        driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=10))
        try:
            assert driver.describe(made.id).size == 8 * MiB
            received = 0
            with pytest.raises(TransientError) as caught, driver.read(made.id) as chunks:
                for chunk in chunks:
                    received += len(chunk)
        finally:
            driver.close()
    assert 0 < received < 8 * MiB
    _one_line(caught.value, "site-x", made.id)


def test_an_unknown_cloud_name_is_permanent(testbed: Any) -> None:
    driver = OpenStackSiteDriver("site-x", _settings("no-such-cloud"))
    with pytest.raises(PermanentError) as caught:
        driver.describe(str(uuid.uuid4()))
    _one_line(caught.value, "site-x")


class GuardTripped(Exception):
    """Stands in for whatever the caller's chunk iterator raises."""


@pytest.mark.parametrize(
    "error",
    [
        GuardTripped("stop"),
        UnsafeImage("backing file found"),
        ShuttingDown("daemon stopping"),
        ConnectionResetError("the caller's own socket"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_exception_from_the_chunks_propagates_unchanged(
    site_b: OpenStackSiteDriver, images: Images, error: BaseException
) -> None:
    record = images.record(site_b)

    def chunks() -> Iterator[bytes]:
        yield os.urandom(MiB)
        yield os.urandom(MiB)
        raise error

    with pytest.raises(type(error)) as caught:
        site_b.receive(record.id, Payload(chunks()))

    assert caught.value is error
    left = site_b.get_record(record.id)
    assert left is not None and left.status != "active"
    site_b.remove(record.id)
    assert site_b.get_record(record.id) is None


def test_a_token_refused_mid_upload_is_transient_and_the_next_attempt_gets_a_new_one(
    testbed: Any, images: Images, tmp_path: Path
) -> None:
    """An upload goes without keystoneauth's re-authentication on 401 (a half-read
    stream cannot be resent). A token Glance refuses anyway (here: revoked at
    Keystone after keystoneauth fetched it) costs one transient attempt, not the
    migration, and the next attempt carries a new token."""
    connection = glance_peer.connect("site-b")
    driver = OpenStackSiteDriver("site-b", _settings("site-b"), connection)
    try:
        record = images.record(driver, disk_format="qcow2")
        # A token Glance has not validated (and cached) yet, revoked by its user.
        connection.session.invalidate()
        token = connection.session.get_token()
        assert token is not None
        revoked = requests.delete(
            f"{testbed.keystone_urls['site-b']}/auth/tokens",
            headers={"X-Auth-Token": token, "X-Subject-Token": token},
            timeout=30,
        )
        assert revoked.status_code == 204
        data = _qcow2(tmp_path)
        with pytest.raises(TransientError, match="refused the token"):
            driver.receive(record.id, Payload(_chunks(data, MiB)))
        assert connection.session.get_token() != token

        driver.receive(record.id, Payload(_chunks(data, MiB)))
        received = driver.get_record(record.id)
        assert received is not None and received.sha512 == hashlib.sha512(data).hexdigest()
    finally:
        driver.close()


# -- registry ------------------------------------------------------------------------------


def test_open_site_builds_the_configured_driver(
    testbed: Any, site_a: OpenStackSiteDriver, images: Images
) -> None:
    sites = load_sites(Path(testbed.sites_dir))
    made = images.image(site_a, b"t" * 512)
    driver = open_source(sites["site-a"])
    try:
        assert isinstance(driver, OpenStackSiteDriver)
        assert driver.describe(made.id).size == 512
    finally:
        driver.close()
    raw = open_destination(sites["site-b-raw"])
    assert raw.required_disk_format == "raw"
    raw.close()
