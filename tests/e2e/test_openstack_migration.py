"""OpenStack → OpenStack through the daemon, against the real test bed."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from openstack.connection import Connection

from migratio import operations
from migratio.config import load_settings
from migratio.ledger.store import Ledger
from tests.support import glance_peer, images, migratio_cli

pytestmark = pytest.mark.testbed

PROPERTIES = glance_peer.TEMPLATE_PROPERTIES


@pytest.fixture(scope="module")
def source_64(site_a: Connection, qcow2_64: Path) -> str:
    return glance_peer.upload_template(site_a, qcow2_64, "template-64")


@dataclass(frozen=True)
class _Uploading:
    file: Path
    source_id: str
    migration_id: str
    daemon: subprocess.Popen[bytes]
    ledger: Ledger


def _uploading(
    config: Path, site_a: Connection, tmp_path: Path, size_mib: int, name: str, min_mib: int
) -> _Uploading:
    """A random image of ``size_mib`` on site-a, its migration submitted and a daemon
    running it, caught once ``min_mib`` have been uploaded: a place to interrupt it."""
    source_file = images.random_qcow2(tmp_path / f"random{size_mib}.qcow2", size_mib)
    source_id = glance_peer.upload(site_a, source_file, name=name)
    migration_id = migratio_cli.submit(config, source_id)
    running, ledger = migratio_cli.start_and_wait(
        config,
        migration_id,
        tmp_path / "migratio_cli.log",
        state="uploading",
        min_bytes=min_mib * images.MIB,
    )
    return _Uploading(source_file, source_id, migration_id, running, ledger)


def _leftovers(config: Path, migration_id: str) -> list[Path]:
    work = config.parent / "work"
    return (
        [
            p
            for p in work.rglob("*")
            if p.is_file() and p.name != "ledger.sqlite" and not p.name.startswith("ledger.sqlite")
        ]
        if work.exists()
        else []
    )


def test_qcow2_migrates_with_properties_and_history(
    daemon_config: Path, site_a: Connection, site_b: Connection, source_64: str, qcow2_64: Path
) -> None:
    migration_id = migratio_cli.submit(daemon_config, source_64)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)

    assert shown["state"] == "done", shown["error"]
    assert [row["to"] for row in shown["history"]] == [
        "queued",
        "exporting",
        "converting",
        "uploading",
        "registering",
        "done",
    ]
    assert [row["from"] for row in shown["history"]][1:] == [
        "queued",
        "exporting",
        "converting",
        "uploading",
        "registering",
    ]
    stamps = [row["at"] for row in shown["history"]]
    assert all(stamps) and stamps == sorted(stamps)
    assert (shown["id"], shown["source_site"], shown["dest_site"], shown["image_id"]) == (
        migration_id,
        "site-a",
        "site-b",
        source_64,
    )

    copy = glance_peer.get(site_b, shown["dest_image_id"])
    assert copy is not None and copy["status"] == "active"
    source_sha512 = images.sha512_of(qcow2_64)
    assert copy["os_hash_value"] == source_sha512
    assert glance_peer.sha512_of_image(site_b, copy["id"]) == source_sha512
    assert shown["source_sha512"] == shown["dest_sha512"] == source_sha512
    expected = {
        "name": "template-64",
        "disk_format": "qcow2",
        "container_format": "bare",
        "min_disk": 1,
        "min_ram": 512,
        "architecture": "x86_64",
        "source_uuid": source_64,
        "source_cs": "site-a",
        "source_t": "site-a",
        **PROPERTIES,
    }
    assert {key: copy.get(key) for key in expected} == expected
    assert [(a["kind"], a["status"]) for a in shown["artifacts"]] == [("dest_image", "kept")]
    assert _leftovers(daemon_config, migration_id) == []


def test_same_image_again_is_deduplicated(
    daemon_config: Path, site_b: Connection, source_64: str
) -> None:
    first = migratio_cli.submit(daemon_config, source_64)
    migratio_cli.run_until_idle(daemon_config)
    second = migratio_cli.submit(daemon_config, source_64)
    migratio_cli.run_until_idle(daemon_config)
    first_shown = migratio_cli.show(daemon_config, first)
    second_shown = migratio_cli.show(daemon_config, second)
    assert second_shown["state"] == "done"
    assert [row["to"] for row in second_shown["history"]] == ["queued", "exporting", "done"]
    assert "nothing copied" in second_shown["history"][-1]["message"]
    assert second_shown["dest_image_id"] == first_shown["dest_image_id"]
    copies = glance_peer.find(site_b, source_uuid=source_64, disk_format="qcow2")
    assert [c["id"] for c in copies] == [first_shown["dest_image_id"]]


def test_qcow2_to_a_raw_site_is_converted(
    daemon_config: Path, site_b: Connection, source_64: str, qcow2_64: Path, tmp_path: Path
) -> None:
    migration_id = migratio_cli.submit(daemon_config, source_64, dest="site-b-raw")
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    expected = images.sha512_of(images.as_raw(qcow2_64, tmp_path / "expected.raw"))
    copy = glance_peer.get(site_b, shown["dest_image_id"])
    assert copy is not None
    assert copy["disk_format"] == "raw"
    assert glance_peer.sha512_of_image(site_b, copy["id"]) == expected == copy["os_hash_value"]
    assert "converted qcow2 to raw" in shown["history"][3]["message"]
    assert _leftovers(daemon_config, migration_id) == []
    assert {a["status"] for a in shown["artifacts"] if a["kind"] == "file"} == {"removed"}


def test_sigkill_while_uploading_resumes_to_one_image(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    upload = _uploading(daemon_config, site_a, tmp_path, 256, "template-256", 32)
    source_file, source_id, migration_id = upload.file, upload.source_id, upload.migration_id
    first, ledger = upload.daemon, upload.ledger
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    interrupted = ledger.get(migration_id)
    assert interrupted.state == "uploading"
    assert interrupted.lease_owner is not None

    migratio_cli.run_until_idle(daemon_config, timeout=300)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert any("taken over from" in row["message"] for row in shown["history"])
    tagged = glance_peer.find(site_b, migratio_migration_id=migration_id)
    assert [image["id"] for image in tagged] == [shown["dest_image_id"]]
    assert tagged[0]["status"] == "active"
    assert tagged[0]["os_hash_value"] == images.sha512_of(source_file)
    assert len(glance_peer.find(site_b, source_uuid=source_id)) == 1
    assert _leftovers(daemon_config, migration_id) == []
    assert all(a["status"] != "present" for a in shown["artifacts"])


def test_sigterm_pauses_at_a_checkpoint_and_exits_zero(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    upload = _uploading(daemon_config, site_a, tmp_path, 384, "template-sigterm", 16)
    migration_id = upload.migration_id
    running, ledger = upload.daemon, upload.ledger
    started = time.monotonic()
    running.send_signal(signal.SIGTERM)
    assert running.wait(30) == 0
    assert time.monotonic() - started < 10
    paused = ledger.get(migration_id)
    # Normally mid-upload; a very fast machine may have finished the upload first.
    assert paused.state in ("uploading", "registering")
    if paused.state == "uploading":
        assert paused.bytes_done < (paused.bytes_total or 0)
    assert paused.lease_owner is None
    assert "paused" in (tmp_path / "migratio_cli.log").read_text() or paused.state == "registering"
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert len(glance_peer.find(site_b, migratio_migration_id=migration_id)) == 1


def test_backing_file_image_fails_with_no_destination_image(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    evil = images.qcow2_with_backing_file(tmp_path / "evil.qcow2")
    source_id = glance_peer.upload(site_a, evil, name="evil")
    migration_id = migratio_cli.submit(daemon_config, source_id)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "failed"
    assert "backing file" in shown["error"]
    assert shown["history"][-1]["message"] == shown["error"]
    assert glance_peer.find(site_b, migratio_migration_id=migration_id) == []
    assert glance_peer.find(site_b, source_uuid=source_id) == []


def test_declared_raw_that_is_qcow2_is_refused_on_the_streamed_path(
    daemon_config: Path, site_a: Connection, site_b: Connection, qcow2_64: Path
) -> None:
    source_id = glance_peer.upload(site_a, qcow2_64, name="liar", disk_format="raw")
    migration_id = migratio_cli.submit(daemon_config, source_id)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "failed"
    assert "qcow2" in shown["error"] and "raw" in shown["error"]
    assert glance_peer.find(site_b, migratio_migration_id=migration_id) == []


def test_an_iso_to_a_site_that_requires_raw_is_refused_before_any_byte_moves(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    iso = tmp_path / "cd.iso"
    iso.write_bytes(b"\0" * 0x8001 + b"CD001\x01" + b"\0" * (64 * 1024 - 0x8007))
    source_id = glance_peer.upload(site_a, iso, name="install-cd", disk_format="iso")
    migration_id = migratio_cli.submit(daemon_config, source_id, dest="site-b-raw")
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "failed"
    assert shown["error"] == (
        f"source image {source_id} is declared 'iso', not a disk image that can be "
        "converted to the raw site-b-raw requires"
    )
    assert [row["to"] for row in shown["history"]] == ["queued", "exporting", "failed"]
    assert shown["artifacts"] == []
    assert glance_peer.find(site_b, source_uuid=source_id) == []


def test_nonexistent_image_fails_with_a_clear_reason(daemon_config: Path) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    migration_id = migratio_cli.submit(daemon_config, missing)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "failed"
    assert missing in shown["error"] and "does not exist" in shown["error"]
    assert [row["to"] for row in shown["history"]] == ["queued", "exporting", "failed"]


def test_name_with_shell_metacharacters_and_non_ascii_arrives_unchanged(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    name = "x\"; touch /tmp/pwned; echo \"$(id) `id` \\ Zażółć gęślą jaźń 日本 'q'"
    small = images.random_qcow2(tmp_path / "small.qcow2", 2)
    source_id = glance_peer.upload(site_a, small, name=name, os_distro="x'; rm -rf ~; '")
    migration_id = migratio_cli.submit(daemon_config, source_id)
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "done", shown["error"]
    copy = glance_peer.get(site_b, shown["dest_image_id"])
    assert copy is not None
    assert copy["name"] == name
    assert copy["os_distro"] == "x'; rm -rf ~; '"
    assert not Path("/tmp/pwned").exists()


def test_cancel_then_retry(daemon_config: Path, source_64: str, site_b: Connection) -> None:
    migration_id = migratio_cli.submit(daemon_config, source_64, dest="site-b-raw")
    assert migratio_cli.cli(daemon_config, "cancel", migration_id).stdout.split() == [
        migration_id,
        "cancelled",
    ]
    refused = migratio_cli.cli(daemon_config, "cancel", migration_id, check=False)
    assert refused.returncode == 1 and "already cancelled" in refused.stderr
    migratio_cli.cli(daemon_config, "retry", migration_id[:8])
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert [row["to"] for row in shown["history"]][:3] == ["queued", "cancelled", "queued"]
    assert shown["state"] == "done"


def test_cancel_while_uploading_removes_the_partial_copy(
    daemon_config: Path, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    upload = _uploading(daemon_config, site_a, tmp_path, 384, "template-cancel", 8)
    migration_id = upload.migration_id
    running, ledger = upload.daemon, upload.ledger
    try:
        settings = load_settings(daemon_config)
        cancelled, ended = operations.cancel(settings, ledger, migration_id)
        assert not ended and cancelled.cancel_requested
        migratio_cli.wait_for(ledger, migration_id, state="cancelled", timeout=30)
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(30) == 0
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["history"][-1]["from"] == "uploading"
    assert shown["error"] == "cancelled by operator"
    assert glance_peer.find(site_b, migratio_migration_id=migration_id) == []
    assert all(a["status"] == "removed" for a in shown["artifacts"])
    assert _leftovers(daemon_config, migration_id) == []
    table = migratio_cli.cli(daemon_config, "status").stdout
    assert migration_id[:8] in table and "cancelled" in table and "site-a → site-b" in table
