"""OpenStack → OpenStack over SSH through the daemon: site-a to ``site-b-ssh``, the
test bed's real sshd whose user's ``openstack`` CLI reaches site-b."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection

from migratio.drivers.ssh.hashes import STATE_KEY
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config

pytestmark = pytest.mark.testbed

SSH_SITE = "site-b-ssh"
PROPERTIES = glance_peer.TEMPLATE_PROPERTIES


@pytest.fixture(scope="module")
def staging_dir(testbed: Any) -> Path:
    site = yaml.safe_load((testbed.sites_dir / f"{SSH_SITE}.yml").read_text())
    return Path(site["staging_dir"])


@pytest.fixture(scope="module")
def source_64(site_a: Connection, qcow2_64: Path) -> str:
    return glance_peer.upload_template(site_a, qcow2_64, "template-64-over-ssh")


def staged(staging_dir: Path, migration_id: str) -> list[Path]:
    return sorted(staging_dir.glob(f"{migration_id}.*")) if staging_dir.exists() else []


def test_qcow2_migrates_over_ssh_with_properties_then_deduplicates(
    daemon_config: Path,
    site_b: Connection,
    source_64: str,
    qcow2_64: Path,
    staging_dir: Path,
) -> None:
    migration_id = migratio_cli.submit(daemon_config, source_64, dest=SSH_SITE)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)

    assert shown["state"] == "done", shown["error"]
    assert [row["to"] for row in shown["history"]] == [
        "queued", "exporting", "converting", "uploading", "registering", "done",
    ]  # fmt: skip
    copy = glance_peer.get(site_b, shown["dest_image_id"])
    assert copy is not None and copy["status"] == "active"
    source_sha512 = images.sha512_of(qcow2_64)
    assert copy["os_hash_value"] == source_sha512
    assert glance_peer.sha512_of_image(site_b, copy["id"]) == source_sha512
    assert shown["source_sha512"] == shown["dest_sha512"] == source_sha512
    expected = {
        "name": "template-64-over-ssh",
        "disk_format": "qcow2",
        "container_format": "bare",
        "min_disk": 1,
        "min_ram": 512,
        "architecture": "x86_64",
        "source_uuid": source_64,
        "source_cs": "site-a",
        "source_t": "site-a",
        "migratio_source_sha512": source_sha512,
        "migratio_migration_id": migration_id,
        **PROPERTIES,
    }
    assert {key: copy.get(key) for key in expected} == expected
    assert [(a["kind"], a["ref"], a["status"]) for a in shown["artifacts"]] == [
        ("dest_image", f"staging:{migration_id}", "removed"),
        ("dest_image", copy["id"], "kept"),
    ]
    assert staged(staging_dir, migration_id) == []

    again = migratio_cli.submit(daemon_config, source_64, dest=SSH_SITE)
    migratio_cli.run_until_idle(daemon_config)
    second = migratio_cli.show(daemon_config, again)
    assert [row["to"] for row in second["history"]] == ["queued", "exporting", "done"]
    assert "nothing copied" in second["history"][-1]["message"]
    assert second["dest_image_id"] == copy["id"]
    assert [c["id"] for c in glance_peer.find(site_b, source_uuid=source_64)] == [copy["id"]]


NAME_TEMPLATES = {
    "quote-semicolon": 'x"; touch {marker}; echo "',
    "substitution-backticks-newline-unicode": (
        "$(touch {marker}) `touch {marker}` ; touch {marker} |\n"
        "touch {marker} 'q' \\ Zażółć gęślą jaźń 日本"
    ),
}


def test_a_name_that_is_a_shell_command_arrives_unchanged_and_runs_nothing(
    daemon_config: Path,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
) -> None:
    # Every name in one daemon run (two workers): each migration is checked on its own.
    submitted = {}
    for case, template in NAME_TEMPLATES.items():
        marker = Path(f"/tmp/pwned-{uuid.uuid4()}")
        name = template.format(marker=marker)
        small = images.random_qcow2(tmp_path / f"{case}.qcow2", 2)
        source_id = glance_peer.upload(site_a, small, name=name, os_distro=f"x'; touch {marker}; '")
        migration_id = migratio_cli.submit(daemon_config, source_id, dest=SSH_SITE)
        submitted[case] = (marker, name, migration_id)
    migratio_cli.run_until_idle(daemon_config)
    for case, (marker, name, migration_id) in submitted.items():
        shown = migratio_cli.show(daemon_config, migration_id)
        assert shown["state"] == "done", (case, shown["error"])
        copy = glance_peer.get(site_b, shown["dest_image_id"])
        assert copy is not None, case
        assert copy["name"] == name
        assert copy["os_distro"] == f"x'; touch {marker}; '"
        assert not marker.exists(), case


@pytest.mark.parametrize("problem", ["unknown-host-key", "unauthorized-key"])
def test_a_host_that_cannot_be_trusted_or_entered_fails_clearly_and_gets_nothing(
    testbed: Any,
    site_a: Connection,
    source_64: str,
    tmp_path: Path,
    problem: str,
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    shutil.copy(testbed.sites_dir / "site-a.yml", sites / "site-a.yml")
    site = yaml.safe_load((testbed.sites_dir / f"{SSH_SITE}.yml").read_text())
    staging_dir = tmp_path / "staging"
    site["staging_dir"] = str(staging_dir)
    if problem == "unknown-host-key":
        (tmp_path / "known_hosts").write_text("")
        site["known_hosts"] = str(tmp_path / "known_hosts")
        expected = "is not in known_hosts"
    else:
        stranger = tmp_path / "stranger_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", stranger], check=True)
        site["key_file"] = str(stranger)
        expected = "refused the key"
    (sites / f"{SSH_SITE}.yml").write_text(yaml.safe_dump(site))
    config = write_daemon_config(tmp_path, sites)

    migration_id = migratio_cli.submit(config, source_64, dest=SSH_SITE)
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed"
    assert expected in shown["error"] and "\n" not in shown["error"]
    assert [row["to"] for row in shown["history"]] == ["queued", "exporting", "failed"]
    assert not staging_dir.exists()


def test_sigkill_during_the_sftp_upload_resumes_and_resends_little(
    daemon_config: Path,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
    staging_dir: Path,
) -> None:
    source_file = images.random_qcow2(tmp_path / "random256.qcow2", 256)
    size = source_file.stat().st_size
    source_id = glance_peer.upload(site_a, source_file, name="template-256-over-ssh")
    migration_id = migratio_cli.submit(daemon_config, source_id, dest=SSH_SITE)
    ledger = migratio_cli.ledger_of(daemon_config)
    part = staging_dir / f"{migration_id}.part"

    first = migratio_cli.start(daemon_config, tmp_path / "daemon1.log")
    try:
        # Killed once the upload journal holds a block (it is saved about once a
        # second), so the restart has something to resume from.
        deadline = time.monotonic() + 120
        while not (ledger.get(migration_id).transfer_state or {}).get(STATE_KEY, {}).get("blocks"):
            assert time.monotonic() < deadline, ledger.get(migration_id)
            time.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    interrupted = ledger.get(migration_id)
    assert interrupted.state == "uploading"
    on_host_at_kill = part.stat().st_size
    assert 0 < on_host_at_kill < size

    migratio_cli.run_until_idle(daemon_config, timeout=300)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert any("taken over from" in row["message"] for row in shown["history"])

    journal = ledger.get(migration_id).transfer_state[STATE_KEY]  # type: ignore[index]
    first_attempt, resumed_at = journal["attempts"]
    assert first_attempt == 0 and resumed_at > 0
    resent = on_host_at_kill - resumed_at
    print(f"on the host at the kill {on_host_at_kill}, resumed at {resumed_at}, re-sent {resent}")
    assert 0 <= resent <= 64 * images.MIB, (on_host_at_kill, resumed_at)
    # Sent over both attempts (the first one's count as of its last save).
    assert journal["sent"] - size <= 64 * images.MIB

    tagged = glance_peer.find(site_b, migratio_migration_id=migration_id)
    assert [image["id"] for image in tagged] == [shown["dest_image_id"]]
    assert tagged[0]["status"] == "active"
    assert tagged[0]["os_hash_value"] == images.sha512_of(source_file)
    assert len(glance_peer.find(site_b, source_uuid=source_id)) == 1
    assert staged(staging_dir, migration_id) == []
    assert all(a["status"] != "present" for a in shown["artifacts"])


def test_sigkill_while_registering_leaves_one_image(
    daemon_config: Path,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
    staging_dir: Path,
) -> None:
    source_file = images.random_qcow2(tmp_path / "random64.qcow2", 64)
    source_id = glance_peer.upload(site_a, source_file, name="template-register-crash")
    migration_id = migratio_cli.submit(daemon_config, source_id, dest=SSH_SITE)
    first, ledger = migratio_cli.start_and_wait(
        daemon_config, migration_id, tmp_path / "daemon1.log", state="registering"
    )
    # Into `openstack image create`, which dies with the SSH session.
    time.sleep(2.0)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert ledger.get(migration_id).state == "registering"
    left = glance_peer.find(site_b, migratio_migration_id=migration_id)
    print("left by the killed registration:", [image["status"] for image in left])

    migratio_cli.run_until_idle(daemon_config, timeout=300)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    tagged = glance_peer.find(site_b, migratio_migration_id=migration_id)
    assert [(image["id"], image["status"]) for image in tagged] == [
        (shown["dest_image_id"], "active")
    ]
    assert tagged[0]["os_hash_value"] == images.sha512_of(source_file)
    assert staged(staging_dir, migration_id) == []
    assert all(a["status"] != "present" for a in shown["artifacts"])


def test_cancel_after_a_crash_mid_upload_removes_the_staging_file(
    daemon_config: Path,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
    staging_dir: Path,
) -> None:
    source_file = images.random_qcow2(tmp_path / "random128.qcow2", 128)
    source_id = glance_peer.upload(site_a, source_file, name="template-cancel-over-ssh")
    migration_id = migratio_cli.submit(daemon_config, source_id, dest=SSH_SITE)
    part = staging_dir / f"{migration_id}.part"
    first = migratio_cli.start(daemon_config, tmp_path / "daemon1.log")
    try:
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size >= 8 * images.MIB):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.005)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert staged(staging_dir, migration_id) == [part]

    migratio_cli.cli(daemon_config, "cancel", migration_id)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "cancelled"
    assert staged(staging_dir, migration_id) == []
    assert glance_peer.find(site_b, migratio_migration_id=migration_id) == []
    assert all(a["status"] != "present" for a in shown["artifacts"])
