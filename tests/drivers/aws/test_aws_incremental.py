"""The AWS driver's incremental versions against the bed's moto, behind the front's
EBS parent EMULATION (moto ignores ParentSnapshotId; tests/support/ebs_parent_emulation.py):
a child snapshot that is stopped and resumed, a base that cannot be used, and a
transfer whose base is not the one the snapshot was started from."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migratio.config import AwsSite
from migratio.drivers.aws.blocks import BlockSet
from migratio.drivers.aws.driver import AwsSiteDriver
from migratio.drivers.aws.versions import BlockMap
from migratio.drivers.base import (
    BASE_RECORD,
    SOURCE_T,
    SOURCE_UUID,
    BaseVersion,
    RecordSpec,
    Registration,
)
from migratio.errors import PermanentError, ShuttingDown
from tests.support import aws_peer
from tests.support.aws_transfer import FileTransfer
from tests.support.ebs_parent_emulation import EbsParentEmulation
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

MIB = aws_peer.MIB
SIZE = 16 * MIB


@pytest.fixture(scope="module")
def moto_url(testbed: Any) -> Iterator[str]:
    url = str(testbed.env["MIGRATIO_MOTO_URL"])
    yield url
    aws_peer.reset(url)


@pytest.fixture(scope="module")
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    EbsParentEmulation(running)
    yield running
    running.stop()


@pytest.fixture
def driver(front: MotoFront) -> Iterator[AwsSiteDriver]:
    site = AwsSite(
        type="aws",
        region=aws_peer.REGION,
        endpoint_url=front.url,
        profile="migratio-testbed",
        workers=2,
    )
    running = AwsSiteDriver("aws-t", site)
    yield running
    running.close()


def _first_version(driver: AwsSiteDriver, raw: Path) -> BaseVersion:
    migration_id = str(uuid.uuid4())
    record = driver.create_record(RecordSpec(migration_id, "v1", "raw", "bare", SIZE))
    transfer = FileTransfer(raw)
    driver.receive(record.id, transfer)
    return BaseVersion("image-v1", migration_id, record.id, "ami-v1", transfer.manifests[record.id])


def test_a_stopped_child_resumes_and_reads_as_the_new_version(
    driver: AwsSiteDriver, front: MotoFront, tmp_path: Path
) -> None:
    versions = aws_peer.two_versions(
        tmp_path, virtual_size=SIZE, data_mib=4, changed_mib=1, zeroed_mib=1, added_mib=1
    )
    base = _first_version(driver, versions.first)
    child = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "v2", "raw", "bare", SIZE, base=base)
    )
    assert child.properties == {BASE_RECORD: base.record_id}

    stopped = FileTransfer(versions.second, base=base, stop_after=4)
    with pytest.raises(ShuttingDown):
        driver.receive(child.id, stopped)
    landed = len(BlockSet.from_json(stopped.state["sent"]))
    assert 0 < landed == sum(front.puts_for(child.id).values()) < len(versions.differing)

    resumed = FileTransfer(versions.second, base=base, state=stopped.state)
    assert driver.receive(child.id, resumed) == resumed.sha512
    puts = front.puts_for(child.id)
    assert set(puts) == versions.differing and set(puts.values()) == {1}
    kept = BlockMap.unpack(resumed.manifests[child.id])
    assert len(kept.blocks) == aws_peer.nonzero_blocks(versions.second)

    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(aws_peer.client("ebs", front.url), child.id, rebuilt, SIZE)
    assert aws_peer.same_bytes(rebuilt, versions.second)

    registration = Registration(
        "v2", "raw", "bare", 0, 0, "x86_64", {SOURCE_UUID: "image-v2", SOURCE_T: "site-a"}
    )
    ami = driver.register(child.id, registration)
    assert (
        ami.properties.items()
        >= {
            SOURCE_UUID: "image-v2",
            "migratio_base_source_uuid": "image-v1",
            "migratio_base_ami": "ami-v1",
            BASE_RECORD: base.record_id,
        }.items()
    )


def test_a_base_larger_than_the_new_version_or_not_the_snapshot_s_is_refused(
    driver: AwsSiteDriver, tmp_path: Path
) -> None:
    raw = tmp_path / "small.raw"
    with raw.open("wb") as handle:
        handle.truncate(SIZE)
        handle.write(b"data")
    base = _first_version(driver, raw)
    larger = BaseVersion("image-big", "m", base.record_id, None, BlockMap(3 << 30, {}).pack())
    # StartSnapshot refuses a child smaller than its parent: started empty instead.
    record = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "v2", "raw", "bare", SIZE, base=larger)
    )
    assert BASE_RECORD not in record.properties
    # A snapshot started empty cannot be written as a child, nor a child without its base.
    with pytest.raises(PermanentError, match=r"started from nothing, not from snap-"):
        driver.receive(record.id, FileTransfer(raw, base=base))
    child = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "v2", "raw", "bare", SIZE, base=base)
    )
    with pytest.raises(PermanentError, match=rf"started from {base.record_id}, not from nothing"):
        driver.receive(child.id, FileTransfer(raw))
