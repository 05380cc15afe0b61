"""Incremental template versions to AWS by ebs-direct, through the daemon.

Version 1 of a template is migrated whole; version 2 (its ``base_image_ref`` is
version 1) starts its snapshot from version 1's and sends only the blocks that
differ. moto ignores ``ParentSnapshotId``: the front's parent EMULATION
(``tests/support/ebs_parent_emulation.py``) reads the child as AWS would, so
the child is rebuilt block by block and compared with version 2's raw disk.
Small sizes here; ``bench/incremental.py`` has the 2 GiB / 256 MiB figures.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from migratio import operations
from migratio.config import load_settings
from migratio.drivers.aws.versions import BlockMap
from migratio.ledger.store import Migration
from tests.support import aws_peer, glance_peer, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.ebs_parent_emulation import EbsParentEmulation
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

MIB = aws_peer.MIB
SIZE = 64 * MIB


@pytest.fixture(scope="module")
def moto_url(testbed: Any) -> Iterator[str]:
    url = str(testbed.env["MIGRATIO_MOTO_URL"])
    yield url
    aws_peer.reset(url)


@pytest.fixture
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


class Daemon:
    """One daemon for the whole test (a start costs seconds on a loaded machine);
    migrations submitted as ``migratio submit`` does, through ``operations.submit``."""

    def __init__(self, config: Path) -> None:
        self.settings = load_settings(config)
        self.ledger = migratio_cli.ledger_of(config)
        self.process = migratio_cli.start(config, config.parent / "daemon.log")

    def migrate(self, *images: tuple[str, str | None]) -> list[Migration]:
        """Submit each (image, base) at once, wait until all have ended; all done."""
        submitted = [
            operations.submit(self.settings, self.ledger, image_id, "site-a", "aws-inc", base)
            for image_id, base in images
        ]
        deadline = time.monotonic() + 120
        ended = []
        for migration in submitted:
            while (migration := self.ledger.get(migration.id)).state not in ("done", "failed"):
                assert time.monotonic() < deadline, migration
                time.sleep(0.05)
            assert migration.state == "done", migration.last_error
            ended.append(migration)
        return ended

    def notes(self, migration: Migration) -> list[str]:
        return [row.message for row in self.ledger.history(migration.id)]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0


def _snapshot_of(ec2: Any, migration_id: str) -> str:
    (snapshot,) = aws_peer.snapshots_of(ec2, migration_id)
    return str(snapshot["SnapshotId"])


def test_a_new_version_sends_only_its_changed_blocks_and_falls_back_without_its_parent(
    testbed: Any, site_a: Connection, front: MotoFront, tmp_path: Path
) -> None:
    emulation = EbsParentEmulation(front)
    versions = aws_peer.two_versions(
        tmp_path, virtual_size=SIZE, data_mib=8, changed_mib=1, zeroed_mib=1, added_mib=1
    )
    sites = tmp_path / "sites"
    sites.mkdir()
    shutil.copy(testbed.dir / "sites" / "site-a.yml", sites)
    aws_peer.write_site(sites, "aws-inc", front.url, workers=4)
    config = write_daemon_config(tmp_path, sites, poll_seconds=0.05)
    daemon = Daemon(config)
    try:
        _two_rounds(daemon, site_a, front, emulation, versions, tmp_path)
    finally:
        daemon.stop()


def _two_rounds(
    daemon: Daemon,
    site_a: Connection,
    front: MotoFront,
    emulation: EbsParentEmulation,
    versions: aws_peer.TwoVersions,
    tmp_path: Path,
) -> None:
    """Round 1: version 1 of a template, and of another one, both sent whole.
    Round 2, once the other one's AMI and snapshot were deleted: version 2 of
    each, the first starting from its parent, the second sent whole (noted)."""
    ec2 = aws_peer.client("ec2", front.url)
    ebs = aws_peer.client("ebs", front.url)
    first_qcow2 = aws_peer.as_qcow2(versions.first)
    second_qcow2 = aws_peer.as_qcow2(versions.second)

    def upload(path: Path, name: str, **extra: str) -> str:
        return glance_peer.upload(site_a, path, name=name, architecture="x86_64", **extra)

    first_id, orphan_id = upload(first_qcow2, "tmpl v1"), upload(first_qcow2, "other v1")
    first, orphan = daemon.migrate((first_id, None), (orphan_id, None))
    first_snapshot = _snapshot_of(ec2, first.id)
    orphan_snapshot = _snapshot_of(ec2, orphan.id)
    nonzero = aws_peer.nonzero_blocks(versions.first)
    assert sum(front.puts_for(first_snapshot).values()) == nonzero == 16
    assert orphan.dest_image_id is not None
    ec2.deregister_image(ImageId=orphan.dest_image_id)
    ec2.delete_snapshot(SnapshotId=orphan_snapshot)

    # Version 2 names version 1 as the image it was made from (as Nova does);
    # the other one's version 2 names its deleted parent at submit (--base).
    second_id = upload(second_qcow2, "tmpl v2", base_image_ref=first_id)
    third_id = upload(second_qcow2, "other v2")
    second, third = daemon.migrate((second_id, None), (third_id, orphan_id))
    second_snapshot = _snapshot_of(ec2, second.id)
    third_snapshot = _snapshot_of(ec2, third.id)

    # Counted on the wire by the front: each differing block once, nothing else.
    puts = front.puts_for(second_snapshot)
    assert set(puts) == versions.differing and set(puts.values()) == {1}
    assert (second.transfer_state or {})["blocks"] == {
        "added": len(versions.added),
        "changed": len(versions.changed),
        "zeroed": len(versions.zeroed),
        "unchanged": nonzero - len(versions.changed) - len(versions.zeroed),
    }
    assert any(
        n.startswith(f"incremental: {second_snapshot} starts from version {first_id}")
        for n in daemon.notes(second)
    ), daemon.notes(second)

    # The child, read through the parent emulation, is version 2 byte for byte.
    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(ebs, second_snapshot, rebuilt, SIZE)
    assert aws_peer.same_bytes(rebuilt, versions.second)

    # The AMI names both versions.
    (image,) = ec2.describe_images(ImageIds=[second.dest_image_id])["Images"]
    assert (
        aws_peer.tags(image).items()
        >= {
            "source_uuid": second_id,
            "migratio_base_source_uuid": first_id,
            "migratio_base_ami": first.dest_image_id,
            "migratio_base_record": first_snapshot,
        }.items()
    )

    # The ledger keeps each version's block map, 36 bytes a block.
    kept = daemon.ledger.version_of_record("aws-inc", second_snapshot)
    assert kept is not None and kept.migration_id == second.id
    assert len(kept.manifest) == 16 + 36 * aws_peer.nonzero_blocks(versions.second)
    assert BlockMap.unpack(kept.manifest).size == SIZE

    # Its parent deleted: sent whole, started empty, and the trail says why.
    assert sum(front.puts_for(third_snapshot).values()) == aws_peer.nonzero_blocks(versions.second)
    assert (
        f"base version {orphan_id}: its record {orphan_snapshot} at aws-inc (migration "
        f"{orphan.id}) is gone; sending all of it"
    ) in daemon.notes(third)
    (image,) = ec2.describe_images(ImageIds=[third.dest_image_id])["Images"]
    assert "migratio_base_record" not in aws_peer.tags(image)
    assert sorted(emulation.starts, key=str) == [None, None, None, first_snapshot]
