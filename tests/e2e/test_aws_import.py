"""The import-snapshot method against the VM Import EMULATION (tests/vm_import_emulation.py)
in front of the bed's moto: S3 and EBS are moto's, the import tasks are emulated."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from migratio.config import AwsSite
from migratio.drivers.aws.driver import AwsSiteDriver
from migratio.drivers.aws.records import StagedObjectRef, parse_record
from migratio.drivers.base import RecordSpec
from migratio.errors import PermanentError, ShuttingDown
from tests.support import aws_peer, glance_peer, images, migratio_cli
from tests.support.aws_transfer import FileTransfer
from tests.support.daemon_config import write_daemon_config
from tests.support.moto_front import MotoFront
from tests.support.vm_import_emulation import UNSUPPORTED_VMDK, VmImportEmulation

pytestmark = pytest.mark.testbed

BUCKET = "migratio-imports"
MIB = aws_peer.MIB


@pytest.fixture(scope="module")
def moto_url(testbed: Any) -> Iterator[str]:
    url = str(testbed.env["MIGRATIO_MOTO_URL"])
    aws_peer.client("s3", url).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": aws_peer.REGION}
    )
    yield url
    aws_peer.reset(url)


@pytest.fixture(scope="module")
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def emulation(moto_url: str, front: MotoFront) -> Iterator[VmImportEmulation]:
    emulated = VmImportEmulation(moto_url).attach(front)
    yield emulated
    emulated.close()


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    return aws_peer.client("s3", moto_url)


@pytest.fixture(scope="module")
def ec2(moto_url: str) -> Any:
    return aws_peer.client("ec2", moto_url)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 MiB virtual, ~20 MiB of random data at scattered offsets."""
    directory = tmp_path_factory.mktemp("img")
    return aws_peer.scattered_qcow2(directory / "small.qcow2", virtual_size=128 * MIB, data_mib=20)


@pytest.fixture
def config(testbed: Any, front: MotoFront, emulation: VmImportEmulation, tmp_path: Path) -> Path:
    sites = tmp_path / "sites"
    sites.mkdir()
    shutil.copy(testbed.dir / "sites" / "site-a.yml", sites)
    aws_peer.write_site(
        sites, "aws-import", front.url, method="import-snapshot", bucket=BUCKET, workers=4
    )
    return write_daemon_config(tmp_path, sites)


def _staged(s3: Any, migration_id: str) -> list[str]:
    prefix = f"migratio/{migration_id}/"
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return [o["Key"] for o in objects] + [u["Key"] for u in uploads]


def test_import_snapshot_end_to_end(
    config: Path,
    site_a: Connection,
    small_disk: Path,
    emulation: VmImportEmulation,
    front: MotoFront,
    s3: Any,
    ec2: Any,
    tmp_path: Path,
) -> None:
    source_id = glance_peer.upload(site_a, small_disk, name="arm template", architecture="aarch64")
    migration_id = migratio_cli.submit(config, source_id, dest="aws-import")
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done", shown["error"]
    assert "converted qcow2 to vmdk" in shown["history"][3]["message"]

    journal = shown["transfer_state"]
    task = emulation.tasks[journal["task_id"]]
    assert task.history[0] == "active:pending" and task.history[-1] == "completed:"
    assert task.tags == {"migratio_migration_id": migration_id}
    assert emulation.describe_calls >= 2  # polled while active, then saw it complete

    ami = shown["dest_image_id"]
    (image,) = ec2.describe_images(ImageIds=[ami])["Images"]
    tags = aws_peer.tags(image)
    assert {key: tags.get(key) for key in ("Name", "source_uuid", "source_cs", "source_t")} == {
        "Name": "arm template",
        "source_uuid": source_id,
        "source_cs": "site-a",
        "source_t": "site-a",
    }
    (register,) = [c for c in front.ec2_calls("RegisterImage") if c["Name"].endswith(source_id)]
    assert (register["Architecture"], register["BootMode"]) == ("arm64", "uefi")
    assert register["BlockDeviceMapping.1.Ebs.SnapshotId"] == journal["snapshot_id"]

    # What VM Import made from the VMDK is the source disk, byte for byte.
    rebuilt = tmp_path / "rebuilt.raw"
    ebs = aws_peer.client("ebs", emulation.moto_url)
    aws_peer.rebuild_disk(ebs, journal["snapshot_id"], rebuilt, 128 * MIB)
    assert aws_peer.same_bytes(rebuilt, images.as_raw(small_disk, tmp_path / "expected.raw"))

    # The staged object is gone; the snapshot and the AMI stay.
    assert _staged(s3, migration_id) == []
    statuses = {(a["kind"], a["status"]) for a in shown["artifacts"]}
    assert statuses == {
        ("file", "removed"),
        ("dest_image", "removed"),  # the S3 object
        ("import_task", "removed"),
        ("snapshot", "kept"),
        ("dest_image", "kept"),  # the AMI
    }


def test_a_failed_import_task_fails_the_migration_with_aws_message(
    config: Path,
    site_a: Connection,
    small_disk: Path,
    emulation: VmImportEmulation,
    s3: Any,
    ec2: Any,
) -> None:
    source_id = glance_peer.upload(site_a, small_disk, name="doomed")
    emulation.fail_next(UNSUPPORTED_VMDK)
    migration_id = migratio_cli.submit(config, source_id, dest="aws-import")
    migratio_cli.run_until_idle(config)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed"
    # Seen while AWS winds the task down (deleting) or after (deleted): a failure either way.
    assert re.search(
        rf"failed \((deleting|deleted)\): {re.escape(UNSUPPORTED_VMDK)}$", shown["error"]
    )
    assert [row["to"] for row in shown["history"]][-2:] == ["uploading", "failed"]
    task = emulation.tasks[shown["transfer_state"]["task_id"]]
    assert f"deleting:{UNSUPPORTED_VMDK}" in task.history
    assert "completed:" not in task.history and task.snapshot_id is None
    assert _staged(s3, migration_id) == []
    assert aws_peer.images_of(ec2, source_uuid=source_id) == []
    assert aws_peer.snapshots_of(ec2, migration_id) == []


def _driver(front: MotoFront) -> AwsSiteDriver:
    settings = AwsSite.model_validate(
        {
            "type": "aws",
            "region": aws_peer.REGION,
            "endpoint_url": front.url,
            "profile": "migratio-testbed",
            "method": "import-snapshot",
            "bucket": BUCKET,
            "workers": 4,
        }
    )
    return AwsSiteDriver("aws-import", settings)


def test_upload_resumes_by_listing_the_parts_s3_holds(
    front: MotoFront, emulation: VmImportEmulation, s3: Any, tmp_path: Path
) -> None:
    # 40 MiB of random data: a stream-optimized VMDK of a bit more, 8 MiB parts.
    source = images.random_qcow2(tmp_path / "random.qcow2", 40)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
         str(source), str(vmdk)],
        check=True,
    )  # fmt: skip
    content = vmdk.read_bytes()
    migration_id = str(uuid.uuid4())
    driver = _driver(front)
    record = driver.create_record(RecordSpec(migration_id, "resumed", "vmdk", "bare", len(content)))
    target = parse_record("aws-import", record.id)
    assert isinstance(target, StagedObjectRef)

    # An earlier run: parts 1 and 2 sent, part 3 sent with other bytes, then a crash.
    part = 8 * MIB
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=target.key)["UploadId"]
    for number, data in ((1, content[:part]), (2, content[part : 2 * part]), (3, bytes(part))):
        s3.upload_part(
            Bucket=BUCKET, Key=target.key, UploadId=upload_id, PartNumber=number, Body=data
        )
    journal = {
        "method": "import-snapshot",
        "record": record.id,
        "upload_id": upload_id,
        "part_size": part,
    }

    seen = len(front.requests)
    transfer = FileTransfer(vmdk, disk_format="vmdk", state=journal)
    assert driver.receive(record.id, transfer) is None
    sent_parts = sorted(
        int(path.split("partNumber=")[1].split("&")[0])
        for method, path, _ in front.requests[seen:]
        if method == "PUT" and "partNumber=" in path
    )
    assert sent_parts == list(range(3, -(-len(content) // part) + 1))  # all but 1 and 2
    assert transfer.state["upload_id"] == upload_id
    # The emulation imported exactly the VMDK: its snapshot is the disk.
    snapshot_id = transfer.state["snapshot_id"]
    assert ("snapshot", snapshot_id) in transfer.artifacts
    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(
        aws_peer.client("ebs", emulation.moto_url), snapshot_id, rebuilt, 40 * MIB
    )
    assert hashlib.sha512(rebuilt.read_bytes()).hexdigest() == images.sha512_of(
        images.as_raw(source, tmp_path / "expected.raw")
    )
    assert _staged(s3, migration_id) == []
    driver.remove(snapshot_id)
    driver.close()


def test_a_resumed_run_polls_the_same_import_task(
    front: MotoFront, emulation: VmImportEmulation, small_disk: Path, tmp_path: Path
) -> None:
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vmdk", "-o", "subformat=streamOptimized",
         str(small_disk), str(vmdk)],
        check=True,
    )  # fmt: skip
    driver = _driver(front)
    record = driver.create_record(RecordSpec(str(uuid.uuid4()), "resumed", "vmdk", "bare", 1))
    target = parse_record("aws-import", record.id)
    assert isinstance(target, StagedObjectRef)

    # Stopped while the task runs, and (worse) before the task id was journalled.
    first = FileTransfer(vmdk, disk_format="vmdk", stop_when=lambda state: "task_id" in state)
    with pytest.raises(ShuttingDown):
        driver.receive(record.id, first)
    task_id = first.state.pop("task_id")
    assert emulation.tasks[task_id].status == "active"

    resumed = FileTransfer(vmdk, disk_format="vmdk", state=first.state)
    assert driver.receive(record.id, resumed) is None
    # The same ClientToken brought the same task back: one import, asked for twice.
    asked = [
        c
        for c in front.ec2_calls("ImportSnapshot")
        if c["DiskContainer.UserBucket.S3Key"] == target.key
    ]
    assert len(asked) == 2 and len({c["ClientToken"] for c in asked}) == 1
    assert [t.id for t in emulation.tasks.values() if t.key == target.key] == [task_id]
    assert resumed.state["task_id"] == task_id
    assert emulation.tasks[task_id].snapshot_id == resumed.state["snapshot_id"]
    driver.remove(resumed.state["snapshot_id"])
    driver.close()


def test_a_vmdk_that_is_not_stream_optimized_is_refused_before_upload(
    front: MotoFront, tmp_path: Path
) -> None:
    vmdk = tmp_path / "sparse.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "64M"], check=True)
    driver = _driver(front)
    record = driver.create_record(RecordSpec(str(uuid.uuid4()), "x", "vmdk", "bare", 1))
    seen = len(front.requests)
    with pytest.raises(PermanentError, match="monolithicSparse VMDK; AWS VM Import takes only"):
        driver.receive(record.id, FileTransfer(vmdk, disk_format="vmdk"))
    assert front.requests[seen:] == []
    driver.close()
