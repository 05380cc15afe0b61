"""The AWS driver's parts, and the driver itself against the bed's moto (no daemon)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.parsers
import pytest

from migratio import disk_map
from migratio.config import AwsSite
from migratio.drivers.aws import errors as aws_errors
from migratio.drivers.aws.ami_boot import ec2_architecture
from migratio.drivers.aws.amis import ami_name
from migratio.drivers.aws.blocks import BLOCK_SIZE, BUFFERS, BlockSet, linear_checksum, scan
from migratio.drivers.aws.driver import AwsSiteDriver, check_region
from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_CS,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
)
from migratio.errors import (
    ConfigError,
    IntegrityError,
    NotFound,
    PermanentError,
    ShuttingDown,
    TransientError,
)
from tests.drivers.aws.manifest_spec import manifest_of_raw
from tests.support import aws_peer, images
from tests.support.aws_transfer import FileTransfer
from tests.support.moto_front import MotoFront

# -- blocks -------------------------------------------------------------------------


def _sparse_file(path: Path) -> Path:
    """Five blocks and a partial one: data at the start, across the 1|2 border,
    allocated zeros in block 3, a hole in block 4, data at the very end."""
    size = 5 * BLOCK_SIZE + 12345
    with path.open("wb") as handle:
        handle.truncate(size)
        os.pwrite(handle.fileno(), os.urandom(10), 0)
        os.pwrite(handle.fileno(), os.urandom(200), 2 * BLOCK_SIZE - 100)
        os.pwrite(handle.fileno(), bytes(BLOCK_SIZE), 3 * BLOCK_SIZE)
        os.pwrite(handle.fileno(), os.urandom(45), size - 45)
    return path


def test_scan_yields_non_zero_blocks_and_hashes_every_byte(tmp_path: Path) -> None:
    path = _sparse_file(tmp_path / "disk.raw")
    content = path.read_bytes()
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        blocks = list(scan(handle.fileno(), len(content), digest))
    assert [block.index for block in blocks] == [0, 1, 2, 5]
    assert digest.hexdigest() == hashlib.sha512(content).hexdigest()
    for block in blocks:
        expected = content[block.index * BLOCK_SIZE : (block.index + 1) * BLOCK_SIZE]
        assert block.data == expected.ljust(BLOCK_SIZE, b"\0")  # the last one padded
        assert block.checksum == base64.b64encode(hashlib.sha256(block.data).digest()).decode()


def test_scan_of_an_empty_disk_sends_nothing_but_hashes_its_zeros(tmp_path: Path) -> None:
    path = tmp_path / "empty.raw"
    with path.open("wb") as handle:
        handle.truncate(3 * BLOCK_SIZE + 7)
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        assert list(scan(handle.fileno(), 3 * BLOCK_SIZE + 7, digest)) == []
    assert digest.hexdigest() == hashlib.sha512(bytes(3 * BLOCK_SIZE + 7)).hexdigest()


def test_block_set_keeps_merged_ranges_and_survives_json() -> None:
    blocks = BlockSet()
    for index in (5, 3, 4, 10, 0, 11, 4):
        blocks.add(index)
    assert blocks.to_json() == [[0, 1], [3, 6], [10, 12]]
    assert len(blocks) == 6 and list(blocks) == [0, 3, 4, 5, 10, 11]
    assert 4 in blocks and 6 not in blocks and 12 not in blocks
    again = BlockSet.from_json(blocks.to_json())
    assert again.to_json() == blocks.to_json()
    for malformed in ([[3, 1]], [[0, 2], [1, 3]], [["a", 1]], "x", None, [[1]]):
        assert len(BlockSet.from_json(malformed)) == 0


def test_linear_checksum_is_sha256_of_the_block_digests_in_order() -> None:
    digests = [hashlib.sha256(bytes([n]) * 8).digest() for n in range(3)]
    expected = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert linear_checksum(digests) == expected


# -- names, regions, errors ------------------------------------------------------------


def test_ami_names_keep_what_register_image_accepts() -> None:
    uuid_ = "076ea369-183c-4fdd-b37d-5b0e1c3aa9d6"
    assert ami_name("Ubuntu 24.04 (noble) [x] it's@home_1.0/b", uuid_) == (
        f"Ubuntu 24.04 (noble) [x] it's@home_1.0/b-{uuid_}"
    )
    assert ami_name('x"; rm -rf ~; $(id) Zażółć', uuid_) == f"x__ rm -rf __ _(id) Za____-{uuid_}"
    long = ami_name("n" * 300, uuid_)
    assert len(long) == 128 and long.endswith(uuid_)


def test_architectures_map_to_ec2_names() -> None:
    assert ec2_architecture("x86_64") == "x86_64"
    assert ec2_architecture("aarch64") == "arm64"
    assert ec2_architecture(None) == "x86_64"
    with pytest.raises(PermanentError, match="ppc64le"):
        ec2_architecture("ppc64le")


def _site(**settings: Any) -> AwsSite:
    return AwsSite.model_validate({"type": "aws", "region": "eu-west-1", **settings})


def test_unknown_region_is_refused_unless_an_endpoint_names_it() -> None:
    check_region("aws-a", _site())
    check_region("aws-a", _site(region="us-gov-west-1"))
    with pytest.raises(ConfigError, match="unknown AWS region 'xx-nowhere-9'") as caught:
        check_region("aws-x", _site(region="xx-nowhere-9"))
    assert caught.value.key == "region"
    check_region("aws-x", _site(region="xx-nowhere-9", endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="unknown AWS region 'xx-nowhere-9'") as caught:
        check_region("aws-x", _site(copy_to_regions=["us-east-1", "xx-nowhere-9"]))
    assert caught.value.key == "copy_to_regions"


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutSnapshotBlock",
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_client_error(400, "RequestThrottledException"), TransientError),
        (_client_error(503, "SlowDown"), TransientError),
        (_client_error(500, "InternalError"), TransientError),
        (_client_error(400, "ValidationException"), PermanentError),
        (_client_error(403, "AccessDeniedException"), PermanentError),
        (_client_error(404, "ResourceNotFoundException"), NotFound),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), TransientError),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), TransientError),
        (botocore.parsers.ResponseParserError("500 page"), TransientError),
        (botocore.exceptions.NoCredentialsError(), PermanentError),
        (botocore.exceptions.ProfileNotFound(profile="p"), PermanentError),
    ],
)
def test_errors_are_typed(error: Exception, kind: type[Exception]) -> None:
    with pytest.raises(kind) as caught, aws_errors.translated("aws-a", "put block 7"):
        raise error
    assert type(caught.value) is kind
    assert str(caught.value).startswith("site aws-a: put block 7: ")


# -- the driver against moto -------------------------------------------------------------


@pytest.fixture(scope="module")
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


@pytest.fixture
def driver(front: MotoFront) -> Iterator[AwsSiteDriver]:
    site = AwsSiteDriver(
        "aws-t", _site(endpoint_url=front.url, profile="migratio-testbed", workers=4)
    )
    yield site
    site.close()


def _registration(source_uuid: str, sha512: str) -> Registration:
    return Registration(
        name="tiny",
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        architecture="x86_64",
        properties={
            SOURCE_UUID: source_uuid,
            SOURCE_CS: "site-a",
            SOURCE_T: "site-a",
            SOURCE_SHA512: sha512,
            "os_distro": "ubuntu",
        },
    )


@pytest.mark.testbed
def test_an_image_aws_cannot_boot_is_refused_before_any_snapshot(
    driver: AwsSiteDriver, front: MotoFront
) -> None:
    migration_id = str(uuid.uuid4())
    calls = len(front.requests)
    spec = RecordSpec(migration_id, "ppc", "raw", "bare", 1024, architecture="ppc64le")
    with pytest.raises(PermanentError, match="site aws-t: AWS has no AMIs for architecture"):
        driver.create_record(spec)
    assert len(front.requests) == calls  # not one request: refused before AWS is asked


@pytest.mark.testbed
def test_record_receive_register_and_remove(driver: AwsSiteDriver, tmp_path: Path) -> None:
    migration_id = str(uuid.uuid4())
    disk = _sparse_file(tmp_path / "disk.raw")
    record = driver.create_record(
        RecordSpec(migration_id, "tiny", "raw", "bare", disk.stat().st_size)
    )
    assert record.status is RecordStatus.OPEN and record.id.startswith("snap-")
    assert driver.find_record(migration_id) == driver.get_record(record.id)

    transfer = FileTransfer(disk)
    assert driver.receive(record.id, transfer) == transfer.sha512
    assert transfer.state["blocks_put"] == transfer.state["blocks_total"] == 4
    assert transfer.paced == 4 * BLOCK_SIZE  # each block waited for the caps first
    assert len(BUFFERS) == 0  # the blocks' buffers, given back once sent, are let go
    finished = driver.get_record(record.id)
    assert finished is not None
    assert (finished.status, finished.sha512) == (RecordStatus.COMPLETE, transfer.sha512)

    source_uuid = str(uuid.uuid4())
    registration = _registration(source_uuid, "f" * 128)
    ami = driver.register(record.id, registration)
    assert ami.id.startswith("ami-") and ami.status is RecordStatus.COMPLETE
    assert ami.parts == (record.id,) and ami.sha512 == transfer.sha512
    assert ami.properties[MIGRATION_ID] == migration_id
    # Re-entered after a crash: the same AMI, by the record or by the AMI itself.
    assert driver.register(record.id, registration).id == ami.id
    assert driver.register(ami.id, registration) == ami
    copy = driver.find_copy(Provenance(source_uuid, "site-a", "f" * 128), "raw")
    assert copy is not None and copy.id == ami.id
    assert driver.find_copy(Provenance(source_uuid, "site-b", "f" * 128), "raw") is None

    for ref in (ami.id, record.id, ami.id, record.id):  # twice: gone is fine
        driver.remove(ref)
    assert driver.get_record(record.id) is None and driver.get_record(ami.id) is None
    assert driver.find_record(migration_id) is None
    driver.remove("s3://no-such-bucket/migratio/x/1.vmdk")


@pytest.mark.testbed
def test_a_stopped_receive_resumes_without_sending_a_block_twice(
    driver: AwsSiteDriver, front: MotoFront, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(64 * BLOCK_SIZE)
        for index in range(0, 64, 2):
            os.pwrite(handle.fileno(), os.urandom(1000), index * BLOCK_SIZE + 77)
    record = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "stop", "raw", "bare", disk.stat().st_size)
    )
    stopped = FileTransfer(disk, stop_after=10)
    with pytest.raises(ShuttingDown):
        driver.receive(record.id, stopped)
    landed = len(BlockSet.from_json(stopped.state["sent"]))
    # Blocks already on the wire when it stopped landed and were journalled;
    # those still queued were never sent.
    assert landed == sum(front.puts_for(record.id).values()) > 0

    resumed = FileTransfer(disk, state=stopped.state)
    assert driver.receive(record.id, resumed) == resumed.sha512
    puts = front.puts_for(record.id)
    assert sorted(puts) == list(range(0, 64, 2)) and set(puts.values()) == {1}
    assert resumed.state["blocks_put"] == 32
    assert resumed.paced == (32 - landed) * BLOCK_SIZE  # the caps saw what was sent again


@pytest.mark.testbed
def test_a_payload_that_does_not_match_its_sha512_is_not_completed(
    driver: AwsSiteDriver, tmp_path: Path
) -> None:
    disk = _sparse_file(tmp_path / "disk.raw")
    record = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "bad", "raw", "bare", disk.stat().st_size)
    )
    with pytest.raises(IntegrityError, match="sha512 differs"):
        driver.receive(record.id, FileTransfer(disk, sha512="0" * 128))
    after = driver.get_record(record.id)
    assert after is not None and (after.status, after.sha512) == (RecordStatus.OPEN, None)
    driver.remove(record.id)


@pytest.mark.testbed
def test_an_unreachable_endpoint_is_a_transient_error(testbed: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    site = AwsSiteDriver("aws-down", _site(endpoint_url=closed, profile="migratio-testbed"))
    with pytest.raises(
        TransientError, match=r"^site aws-down: find the record: .*Could not connect"
    ):
        site.find_record(str(uuid.uuid4()))
    assert not hasattr(site, "describe") and not hasattr(site, "read")


@pytest.mark.testbed
def test_a_converted_payload_is_verified_by_its_manifest(
    driver: AwsSiteDriver, tmp_path: Path
) -> None:
    """No payload sha512 known (converted here): none is computed, and the snapshot
    and its AMI report the manifest digest, the same as the specification's."""
    disk = _sparse_file(tmp_path / "disk.raw")
    migration_id = str(uuid.uuid4())
    record = driver.create_record(
        RecordSpec(migration_id, "converted", "raw", "bare", disk.stat().st_size)
    )
    transfer = FileTransfer(disk, sha512=None)
    manifest = manifest_of_raw(disk)
    assert driver.receive(record.id, transfer) == manifest
    assert transfer.state["manifest_sha512"] == manifest
    finished = driver.get_record(record.id)
    assert finished is not None
    assert (finished.status, finished.sha512) == (RecordStatus.COMPLETE, manifest)
    assert "migratio_payload_sha512" not in finished.properties
    ami = driver.register(record.id, _registration(str(uuid.uuid4()), "f" * 128))
    assert ami.sha512 == manifest
    assert ami.properties["migratio_payload_manifest_sha512"] == manifest
    assert "migratio_payload_sha512" not in ami.properties
    # A payload whose sha512 was known and checked carries both, and reports that sha512.
    checked = FileTransfer(disk)
    other = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "raw", "raw", "bare", disk.stat().st_size)
    )
    assert driver.receive(other.id, checked) == checked.sha512
    both = driver.get_record(other.id)
    assert both is not None and both.properties["migratio_payload_manifest_sha512"] == manifest
    assert both.properties["migratio_payload_sha512"] == checked.sha512
    for ref in (ami.id, record.id, other.id):
        driver.remove(ref)


@pytest.mark.testbed
def test_a_mapped_qcow2_lands_as_its_raw_disk_and_resumes(
    driver: AwsSiteDriver, front: MotoFront, moto_url: str, tmp_path: Path
) -> None:
    """ebs-direct reading the staged qcow2 through its disk map (no raw copy): the
    snapshot is the raw disk qemu-img converts it to, each block sent once though
    the first run stopped."""
    image = images.qcow2_out_of_order(tmp_path / "disk.qcow2")
    raw = images.as_raw(image, tmp_path / "disk.raw")
    mapped = disk_map.plan(image, "qcow2", tmp_path / "disk.map")
    assert mapped is not None
    record = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "mapped", "raw", "bare", mapped.size)
    )

    stopped = FileTransfer(image, sha512=None, disk_map=mapped, stop_after=1)
    with pytest.raises(ShuttingDown):
        driver.receive(record.id, stopped)
    landed = BlockSet.from_json(stopped.state["sent"])
    resumed = FileTransfer(image, sha512=None, disk_map=mapped, state=stopped.state)
    manifest = manifest_of_raw(raw)
    assert driver.receive(record.id, resumed) == manifest

    puts = front.puts_for(record.id)
    assert sorted(puts) == [0, 1, 2, 5] and set(puts.values()) == {1}
    assert set(landed) <= set(puts)
    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(aws_peer.client("ebs", moto_url), record.id, rebuilt, mapped.size)
    assert aws_peer.same_bytes(rebuilt, raw)
    finished = driver.get_record(record.id)
    assert finished is not None
    assert (finished.status, finished.sha512) == (RecordStatus.COMPLETE, manifest)
    driver.remove(record.id)
