"""OpenStack → AWS by ebs-direct through the daemon: the bed's Glance and its moto.

moto keeps snapshot blocks in memory; the images here hold at most ~70 MiB of
data. Every test that needs a site beyond the bed's ``aws-a`` writes it into a
private sites dir, so no test changes what the others load.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from migratio.drivers.aws.blocks import BlockSet
from migratio.ledger.store import Ledger
from tests.drivers.aws.manifest_spec import manifest_of_raw, qcow2_data_ranges
from tests.support import aws_peer, glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

MIB = aws_peer.MIB
GIB = aws_peer.GIB


@pytest.fixture(scope="module")
def ec2(moto_url: str) -> Any:
    return aws_peer.client("ec2", moto_url)


@pytest.fixture(scope="module")
def ebs(moto_url: str) -> Any:
    return aws_peer.client("ebs", moto_url)


@pytest.fixture(scope="module")
def scattered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB virtual, ~40 MiB of random data at scattered offsets."""
    return aws_peer.scattered_qcow2(tmp_path_factory.mktemp("img") / "scattered.qcow2")


@pytest.fixture(scope="module")
def scattered_raw(scattered: Path) -> Path:
    return images.as_raw(scattered, scattered.with_suffix(".raw"))


@pytest.fixture(scope="module")
def first_migration(
    testbed: Any, site_a: Connection, scattered: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    """The scattered image migrated to the bed's ``aws-a`` once: (config, migration, source)."""
    config = write_daemon_config(tmp_path_factory.mktemp("first"), testbed.dir / "sites")
    source_id = glance_peer.upload(site_a, scattered, name="scattered 1G", architecture="x86_64")
    migration_id = migratio_cli.submit(config, source_id, dest="aws-a")
    migratio_cli.run_until_idle(config)
    return config, migration_id, source_id


@pytest.fixture
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


def private_sites(testbed: Any, directory: Path, *copied: str) -> Path:
    """A sites dir holding copies of some of the bed's site files."""
    sites = directory / "sites"
    sites.mkdir()
    for site in ("site-a", *copied):
        shutil.copy(testbed.dir / "sites" / f"{site}.yml", sites)
    return sites


def _leftover_files(config: Path) -> list[Path]:
    work = config.parent / "work"
    return [p for p in work.rglob("*") if p.is_file() and not p.name.startswith("ledger.sqlite")]


# -- the main path -------------------------------------------------------------------


def test_scattered_qcow2_becomes_an_ami_by_ebs_direct(
    first_migration: tuple[Path, str, str],
    scattered: Path,
    scattered_raw: Path,
    ec2: Any,
    ebs: Any,
    tmp_path: Path,
) -> None:
    config, migration_id, source_id = first_migration
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert [row["to"] for row in shown["history"]] == [
        "queued", "exporting", "converting", "uploading", "registering", "done",
    ]  # fmt: skip

    ami = shown["dest_image_id"]
    (image,) = ec2.describe_images(ImageIds=[ami])["Images"]
    assert image["Name"] == f"scattered 1G-{source_id}"
    source_sha512 = images.sha512_of(scattered)
    expected_tags = {
        "Name": "scattered 1G",
        "source_uuid": source_id,
        "source_cs": "site-a",
        "source_t": "site-a",
        "migratio_source_sha512": source_sha512,
        "migratio_migration_id": migration_id,
    }
    assert aws_peer.tags(image).items() >= expected_tags.items()

    (snapshot,) = aws_peer.snapshots_of(ec2, migration_id)
    assert snapshot["VolumeSize"] == 1
    kept = [(a["kind"], a["ref"]) for a in shown["artifacts"] if a["status"] == "kept"]
    assert kept == [("dest_image", snapshot["SnapshotId"]), ("dest_image", ami)]
    assert {a["status"] for a in shown["artifacts"] if a["kind"] == "file"} == {"removed"}
    assert _leftover_files(config) == []

    # The snapshot's blocks, laid into a zero-filled file, are the raw disk.
    rebuilt = tmp_path / "rebuilt.raw"
    listed = aws_peer.rebuild_disk(ebs, snapshot["SnapshotId"], rebuilt, GIB)
    assert aws_peer.same_bytes(rebuilt, scattered_raw)

    # Only non-zero blocks were sent, each once.
    nonzero = aws_peer.nonzero_blocks(scattered_raw)
    journal = shown["transfer_state"]
    assert listed == nonzero == journal["blocks_total"] == journal["blocks_sent"]
    assert journal["blocks_put"] <= 1.05 * nonzero
    assert nonzero * aws_peer.BLOCK < GIB / 10  # the point: far less than the disk
    # The AMI carries what the payload was verified to be: its manifest digest
    # (blocks.Manifest), equal to one computed from the source's disk bytes by
    # the specification, not by migratio's code.
    payload = manifest_of_raw(scattered_raw)
    # The destination reads the file itself and reports what it read: no second hash.
    assert shown["payload_sha512"] is None
    assert shown["dest_sha512"] == payload
    assert aws_peer.tags(image)["migratio_payload_manifest_sha512"] == payload
    assert aws_peer.tags(snapshot)["migratio_payload_manifest_sha512"] == payload
    # A sha512 of every byte was never computed, so none is claimed.
    assert "migratio_payload_sha512" not in aws_peer.tags(image)
    assert shown["transfer_state"]["manifest_sha512"] == payload


def test_same_image_again_is_deduplicated(first_migration: tuple[Path, str, str], ec2: Any) -> None:
    config, first_id, source_id = first_migration
    second_id = migratio_cli.submit(config, source_id, dest="aws-a")
    migratio_cli.run_until_idle(config)
    first = migratio_cli.show(config, first_id)
    second = migratio_cli.show(config, second_id)
    assert second["state"] == "done", second["error"]
    assert [row["to"] for row in second["history"]] == ["queued", "exporting", "done"]
    assert "nothing copied" in second["history"][-1]["message"]
    assert second["dest_image_id"] == first["dest_image_id"]
    assert [i["ImageId"] for i in aws_peer.images_of(ec2, source_uuid=source_id)] == [
        first["dest_image_id"]
    ]
    assert aws_peer.snapshots_of(ec2, second_id) == []


def test_cost_follows_the_data_not_the_virtual_size(
    testbed: Any, site_a: Connection, ec2: Any, ebs: Any, tmp_path: Path
) -> None:
    """~6 MiB of data at 1 and at 64 GiB virtual. Hashing every hole made the large
    one ~30x slower; now only data is read, so it takes about as long."""
    config = write_daemon_config(tmp_path, testbed.dir / "sites", concurrency=1)
    walls = {}
    for virtual_gib in (1, 64):
        qcow2 = aws_peer.scattered_qcow2(
            tmp_path / f"v{virtual_gib}.qcow2", virtual_size=virtual_gib * GIB, data_mib=6
        )
        source_id = glance_peer.upload(
            site_a, qcow2, name=f"sparse {virtual_gib}G", architecture="x86_64"
        )
        migration_id = migratio_cli.submit(config, source_id, dest="aws-a")
        migratio_cli.run_until_idle(config)
        shown = migratio_cli.show(config, migration_id)
        assert shown["state"] == "done", shown["error"]
        stamps = {row["to"]: row["at"] for row in shown["history"]}
        walls[virtual_gib] = _seconds(stamps["exporting"], stamps["done"])

        (snapshot,) = aws_peer.snapshots_of(ec2, migration_id)
        assert snapshot["VolumeSize"] == virtual_gib
        journal = shown["transfer_state"]
        stored = len(list(aws_peer.snapshot_blocks(ebs, snapshot["SnapshotId"])))
        assert stored == journal["blocks_total"] == journal["blocks_put"]
        assert stored * aws_peer.BLOCK < 24 * MIB  # pieces straddle block borders
        # What the AMI says it holds is the source disk's manifest (read where
        # qemu-img map finds data: reading 64 GiB of holes would take minutes).
        raw = images.as_raw(qcow2, qcow2.with_suffix(".raw"))
        expected = manifest_of_raw(raw, qcow2_data_ranges(qcow2))
        assert shown["dest_sha512"] == expected
        (image,) = ec2.describe_images(ImageIds=[shown["dest_image_id"]])["Images"]
        assert aws_peer.tags(image)["migratio_payload_manifest_sha512"] == expected
    print(f"exporting -> done: 1 GiB virtual {walls[1]:.2f} s, 64 GiB virtual {walls[64]:.2f} s")
    assert walls[64] <= 3 * max(walls[1], 1.0)


def _seconds(start: str, end: str) -> float:
    parsed = [datetime.fromisoformat(stamp.rstrip("Z")) for stamp in (start, end)]
    return (parsed[1] - parsed[0]).total_seconds()


# -- crash, cancel -------------------------------------------------------------------


def _slow_upload(
    testbed: Any, site_a: Connection, scattered: Path, front: MotoFront, tmp_path: Path, name: str
) -> tuple[Path, str, str, Ledger, subprocess.Popen[bytes]]:
    """The scattered image as a new Glance image (the first one would be
    deduplicated), submitted to ``aws-slow`` (moto behind ``front``, 0.1 s a
    block, 2 at a time: ~131 blocks, ~6.5 s of upload to interrupt) and a daemon
    started on it: (config, source, migration, ledger, daemon)."""
    sites = private_sites(testbed, tmp_path)
    aws_peer.write_site(sites, "aws-slow", front.url, workers=2)
    config = write_daemon_config(tmp_path, sites)
    source_id = glance_peer.upload(site_a, scattered, name=name, architecture="x86_64")
    migration_id = migratio_cli.submit(config, source_id, dest="aws-slow")
    ledger = migratio_cli.ledger_of(config)
    front.block_delay = 0.1
    daemon = migratio_cli.start(config, tmp_path / "daemon.log")
    return config, source_id, migration_id, ledger, daemon


def test_sigkill_while_uploading_resumes_into_one_snapshot(
    testbed: Any,
    site_a: Connection,
    scattered: Path,
    scattered_raw: Path,
    front: MotoFront,
    ec2: Any,
    ebs: Any,
    tmp_path: Path,
) -> None:
    config, source_id, migration_id, ledger, first = _slow_upload(
        testbed, site_a, scattered, front, tmp_path, "scattered crash"
    )
    # Blocks leave while the qcow2 downloads; killed once its download is verified
    # and staged (before that, a resumed run cannot trust what was sent: it starts
    # a new snapshot, tests/unit/test_engine_following.py).
    staged = tmp_path / "work" / migration_id / "source.qcow2"
    try:
        journal = _wait_for_journal(ledger, migration_id, blocks=20, staged=staged)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    time.sleep(0.5)  # blocks already on the wire still land in moto
    journal = ledger.get(migration_id).transfer_state or journal
    snapshot_id = journal["snapshot_id"]
    sent_before = BlockSet.from_json(journal["sent"])
    puts_before = front.puts_for(snapshot_id)
    nonzero = aws_peer.nonzero_blocks(scattered_raw)
    assert ledger.get(migration_id).state == "uploading"
    assert 0 < len(sent_before) < nonzero

    front.block_delay = 0.0
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert any("taken over from" in row["message"] for row in shown["history"])
    assert shown["transfer_state"]["snapshot_id"] == snapshot_id  # reused, not restarted

    # One snapshot, one AMI.
    assert [s["SnapshotId"] for s in aws_peer.snapshots_of(ec2, migration_id)] == [snapshot_id]
    amis = aws_peer.images_of(ec2, migratio_migration_id=migration_id)
    assert [i["ImageId"] for i in amis] == [shown["dest_image_id"]]

    # Counted by the front, not by migratio: blocks journalled before the kill
    # were never sent again; the second run sent exactly the others.
    puts = front.puts_for(snapshot_id)
    assert all(puts[index] == 1 for index in sent_before)
    second_run = sum(puts.values()) - sum(puts_before.values())
    assert second_run == nonzero - len(sent_before)
    resent = sum(puts.values()) - nonzero  # sent, not yet journalled, when killed
    print(
        f"crash test: {nonzero} non-zero blocks, {len(sent_before)} journalled before the "
        f"kill, {sum(puts_before.values())} sent before it, {second_run} after; "
        f"{resent} sent twice"
    )
    assert resent <= sum(puts_before.values()) - len(sent_before)

    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(ebs, snapshot_id, rebuilt, GIB)
    assert aws_peer.same_bytes(rebuilt, scattered_raw)

    # What moto ignores, checked on the wire: an HVM AMI booting /dev/xvda with ENA.
    (register,) = front.ec2_calls("RegisterImage")
    assert {key: register.get(key) for key in _REGISTER_KEYS} == {
        "Name": f"scattered crash-{source_id}",
        "Architecture": "x86_64",
        "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm",
        "EnaSupport": "true",
        "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.Ebs.SnapshotId": snapshot_id,
    }


_REGISTER_KEYS = (
    "Name",
    "Architecture",
    "RootDeviceName",
    "VirtualizationType",
    "EnaSupport",
    "BlockDeviceMapping.1.DeviceName",
    "BlockDeviceMapping.1.Ebs.SnapshotId",
)


def _wait_for_journal(
    ledger: Any, migration_id: str, *, blocks: int, staged: Path | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        migration = ledger.get(migration_id)
        journal = migration.transfer_state or {}
        enough = migration.state == "uploading" and journal.get("blocks_sent", 0) >= blocks
        if enough and (staged is None or staged.exists()):
            return dict(journal)
        time.sleep(0.05)
    raise TimeoutError(
        f"{migration_id}: no journal with {blocks} blocks: {ledger.get(migration_id)}"
    )


def test_cancel_while_uploading_removes_the_snapshot(
    testbed: Any, site_a: Connection, scattered: Path, front: MotoFront, ec2: Any, tmp_path: Path
) -> None:
    from migratio import operations
    from migratio.config import load_settings

    config, source_id, migration_id, ledger, running = _slow_upload(
        testbed, site_a, scattered, front, tmp_path, "scattered cancel"
    )
    try:
        _wait_for_journal(ledger, migration_id, blocks=10)
        operations.cancel(load_settings(config), ledger, migration_id)
        migratio_cli.wait_for(ledger, migration_id, state="cancelled", timeout=60)
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(30) == 0
    shown = migratio_cli.show(config, migration_id)
    assert shown["history"][-1]["from"] == "uploading"
    assert aws_peer.snapshots_of(ec2, migration_id) == []
    assert aws_peer.images_of(ec2, source_uuid=source_id) == []
    assert all(a["status"] == "removed" for a in shown["artifacts"])
    assert _leftover_files(config) == []


# -- bad input -------------------------------------------------------------------------


def test_unsafe_qcow2_is_rejected_before_any_upload(
    daemon_config: Path, site_a: Connection, ec2: Any, tmp_path: Path
) -> None:
    evil = images.qcow2_with_backing_file(tmp_path / "evil.qcow2")
    source_id = glance_peer.upload(site_a, evil, name="evil")
    migration_id = migratio_cli.submit(daemon_config, source_id, dest="aws-a")
    migratio_cli.run_until_idle(daemon_config)
    shown = migratio_cli.show(daemon_config, migration_id)
    assert shown["state"] == "failed"
    assert "backing file" in shown["error"]
    assert [row["to"] for row in shown["history"]] == ["queued", "exporting", "failed"]
    assert aws_peer.snapshots_of(ec2, migration_id) == []
    assert aws_peer.images_of(ec2, source_uuid=source_id) == []


def test_aws_down_is_retried_then_fails_with_a_clear_reason(
    testbed: Any, site_a: Connection, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sites = private_sites(testbed, tmp_path)
    aws_peer.write_site(sites, "aws-down", closed)
    config = write_daemon_config(tmp_path, sites)
    small = images.random_qcow2(tmp_path / "small.qcow2", 1)
    source_id = glance_peer.upload(site_a, small, name="small")
    migration_id = migratio_cli.submit(config, source_id, dest="aws-down")
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed"
    assert shown["error"].startswith("gave up after 3 attempts: site aws-down: ")
    assert f'Could not connect to the endpoint URL: "{closed}' in shown["error"]
    retries = [row for row in shown["history"] if row["from"] == row["to"] == "exporting"]
    assert len(retries) == 2


def test_unknown_region_is_refused(testbed: Any, site_a: Connection, tmp_path: Path) -> None:
    sites = private_sites(testbed, tmp_path)
    (sites / "aws-nowhere.yml").write_text("type: aws\nregion: xx-nowhere-9\n", encoding="utf-8")
    config = write_daemon_config(tmp_path, sites)
    migration_id = migratio_cli.submit(
        config, "00000000-0000-4000-8000-000000000000", dest="aws-nowhere"
    )
    started = time.monotonic()
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed"
    assert "unknown AWS region 'xx-nowhere-9'" in shown["error"]
    assert [row["to"] for row in shown["history"]] == ["queued", "failed"]
    assert time.monotonic() - started < 30


def test_bad_endpoint_is_refused_at_start(testbed: Any, tmp_path: Path) -> None:
    sites = private_sites(testbed, tmp_path)
    bad = sites / "aws-bad.yml"
    bad.write_text("type: aws\nregion: eu-west-1\nendpoint_url: 127.0.0.1:4566\n", encoding="utf-8")
    config = write_daemon_config(tmp_path, sites)
    result = migratio_cli.cli(config, "run", "--until-idle", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"migratio: config error: {bad}: endpoint_url: Value error, must be an http(s) URL"
    )
