"""Encrypted snapshots against the bed's moto, through the tests' front: moto
ignores StartSnapshot's Encrypted and KmsKeyArn, so they are asserted on the
wire; every block of the payload is sent, zero blocks included
(docs/aws-encryption.md says why)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from migratio.drivers.aws.records import StagedObjectRef
from migratio.drivers.base import BaseVersion, RecordSpec
from tests.drivers.aws.manifest_spec import manifest_of_raw
from tests.drivers.aws.site_helpers import site_driver, six_block_disk
from tests.support import aws_peer
from tests.support.aws_transfer import FileTransfer
from tests.support.moto_front import MotoFront
from tests.support.vm_import_emulation import VmImportEmulation

pytestmark = pytest.mark.testbed

KEY = "arn:aws:kms:eu-west-1:123456789012:key/0c3f6b1e-4a7d-4e0b-9a31-6d2f5a8c9e10"


@pytest.fixture
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


def test_an_encrypted_snapshot_is_started_with_the_key_and_gets_every_block(
    front: MotoFront, moto_url: str, tmp_path: Path
) -> None:
    disk = six_block_disk(tmp_path / "disk.raw")
    driver = site_driver(front, kms_key_id=KEY)
    try:
        record = driver.create_record(
            RecordSpec(str(uuid.uuid4()), "enc", "raw", "bare", disk.stat().st_size)
        )
        transfer = FileTransfer(disk)
        assert driver.receive(record.id, transfer) == transfer.sha512
    finally:
        driver.close()
    (started,) = front.ebs_calls("POST", "/snapshots")
    assert (started["Encrypted"], started["KmsKeyArn"]) == (True, KEY)
    # Holes and zero blocks too: an encrypted snapshot does not read them as zeros.
    assert front.puts_for(record.id) == {index: 1 for index in range(6)}
    assert transfer.state["blocks_total"] == transfer.state["blocks_put"] == 6
    # The manifest still lists the data blocks only: the same digest as unencrypted.
    assert transfer.state["manifest_sha512"] == manifest_of_raw(disk)
    rebuilt = tmp_path / "rebuilt.raw"
    ebs = aws_peer.client("ebs", moto_url)
    assert aws_peer.rebuild_disk(ebs, record.id, rebuilt, disk.stat().st_size) == 6
    assert aws_peer.same_bytes(rebuilt, disk)


def test_encrypted_without_a_key_asks_for_the_default_key_and_plain_sends_no_zeros(
    front: MotoFront, tmp_path: Path
) -> None:
    disk = six_block_disk(tmp_path / "disk.raw")
    for settings, data_blocks in (({"encrypted": True}, 6), ({}, 3)):
        driver = site_driver(front, **settings)
        try:
            record = driver.create_record(
                RecordSpec(str(uuid.uuid4()), "x", "raw", "bare", disk.stat().st_size)
            )
            driver.receive(record.id, FileTransfer(disk))
        finally:
            driver.close()
        assert sum(front.puts_for(record.id).values()) == data_blocks
    default, plain = front.ebs_calls("POST", "/snapshots")
    assert default["Encrypted"] is True and "KmsKeyArn" not in default
    assert "Encrypted" not in plain and "KmsKeyArn" not in plain


def test_an_encrypted_import_asks_vm_import_for_the_key(front: MotoFront, moto_url: str) -> None:
    emulation = VmImportEmulation(moto_url).attach(front)
    alias = "alias/migratio-imports"
    driver = site_driver(front, method="import-snapshot", bucket="nowhere", kms_key_id=alias)
    try:
        target = StagedObjectRef("nowhere", f"migratio/{uuid.uuid4()}/1.vmdk")
        driver.tasks.start(target, target.migration_id, "upload-1")
    finally:
        driver.close()
        emulation.close()
    (asked,) = front.ec2_calls("ImportSnapshot")
    assert (asked["Encrypted"], asked["KmsKeyId"]) == ("true", alias)


def test_an_encrypted_site_never_starts_from_a_parent_and_uploads_in_full(
    front: MotoFront, tmp_path: Path
) -> None:
    """StartSnapshot refuses Encrypted with ParentSnapshotId, and a block neither
    version wrote would read as noise: a new version goes up whole."""
    disk = six_block_disk(tmp_path / "disk.raw")
    driver = site_driver(front, kms_key_id=KEY)
    try:
        first = driver.create_record(
            RecordSpec(str(uuid.uuid4()), "v1", "raw", "bare", disk.stat().st_size)
        )
        transfer = FileTransfer(disk)
        driver.receive(first.id, transfer)
        base = BaseVersion("image-v1", "m-1", first.id, None, transfer.manifests[first.id])
        second = driver.create_record(
            RecordSpec(str(uuid.uuid4()), "v2", "raw", "bare", disk.stat().st_size, base=base)
        )
        driver.receive(second.id, FileTransfer(disk))
    finally:
        driver.close()
    started = front.ebs_calls("POST", "/snapshots")
    assert [call.get("ParentSnapshotId") for call in started] == [None, None]
    assert all(call["Encrypted"] is True for call in started)
    assert front.puts_for(second.id) == {index: 1 for index in range(6)}
