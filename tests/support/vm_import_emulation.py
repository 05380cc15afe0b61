"""An EMULATION of EC2 VM Import's import-snapshot tasks, which moto does not have.

This is not AWS and not moto: moto 5 answers ``ImportSnapshot``,
``DescribeImportSnapshotTasks`` and ``CancelImportTask`` with HTTP 500. This
module answers those three EC2 Query API calls itself, in front of the test
bed's moto (through ``tests.moto_front.MotoFront``, which forwards every other
EC2, S3 and EBS call to moto unchanged), so migratio's import-snapshot method
can be tested against real S3 and EBS behaviour.

What it emulates, after AWS's documentation of the task lifecycle:
- ``ImportSnapshot`` (DiskContainer.Format VMDK, UserBucket) starts a task
  ``import-snap-...`` in status ``active``; a repeated ClientToken returns the
  same task, as AWS does.
- A worker then reads the object from moto's S3, refuses anything but a
  stream-optimized VMDK (AWS: "Unsupported VMDK File Format"), converts it
  with qemu-img and writes the non-zero 512 KiB blocks into a new snapshot in
  moto through the EBS direct APIs; the task walks ``active`` (pending,
  validating, converting with progress) to ``completed`` with ``SnapshotId``.
- A failed task goes ``deleting`` then ``deleted`` with a ``ClientError: ...``
  status message; ``fail_next(message)`` makes the next task fail that way.
- ``CancelImportTask`` on an active task sends it to ``deleting``/``deleted``.
Tags given to the task stay on the task, as on AWS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from tests.support import aws_peer
from tests.support.moto_front import FrontRequest, FrontResponse, MotoFront

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
ACTIONS = frozenset({"ImportSnapshot", "DescribeImportSnapshotTasks", "CancelImportTask"})
UNSUPPORTED_VMDK = "ClientError: Disk validation failed [Unsupported VMDK File Format]"


@dataclass
class ImportTask:
    id: str
    description: str
    bucket: str
    key: str
    tags: dict[str, str]
    status: str = "active"
    status_message: str | None = "pending"
    progress: str | None = "0"
    snapshot_id: str | None = None
    disk_image_size: float | None = None
    history: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def move(self, status: str, message: str | None, progress: str | None = None) -> None:
        self.status, self.status_message, self.progress = status, message, progress
        self.history.append(f"{status}:{message or ''}")


class VmImportEmulation:
    """Answers the import-snapshot calls for a MotoFront; see the module docstring.

    moto_url: the bed's moto, where objects are read and snapshots written.
    step_seconds: how long each task stage lasts, so callers see ``active``.
    """

    def __init__(self, moto_url: str, step_seconds: float = 0.3) -> None:
        self.moto_url = moto_url
        self.step_seconds = step_seconds
        self.tasks: dict[str, ImportTask] = {}
        self.describe_calls = 0
        self._tokens: dict[str, str] = {}
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._scratch = Path(tempfile.mkdtemp(prefix="vm-import-emulation-"))

    def attach(self, front: MotoFront) -> VmImportEmulation:
        front.hooks.append(self.handle)
        return self

    def fail_next(self, message: str) -> None:
        """The next task fails (``deleted``) with this status message."""
        with self._lock:
            self._failures.append(message)

    # -- the Query API ---------------------------------------------------------------

    def handle(self, request: FrontRequest) -> FrontResponse | None:
        form = request.form()
        action = form.get("Action")
        if action not in ACTIONS:
            return None
        if action == "ImportSnapshot":
            return self._import_snapshot(form)
        if action == "DescribeImportSnapshotTasks":
            return self._describe(form)
        return self._cancel(form)

    def _import_snapshot(self, form: dict[str, str]) -> FrontResponse:
        fmt = form.get("DiskContainer.Format", "").upper()
        bucket = form.get("DiskContainer.UserBucket.S3Bucket")
        key = form.get("DiskContainer.UserBucket.S3Key")
        if fmt not in ("VMDK", "RAW", "VHD", "VHDX") or not bucket or not key:
            return _error(400, "InvalidParameter", "DiskContainer needs a Format and a UserBucket")
        with self._lock:
            token = form.get("ClientToken")
            if token and token in self._tokens:
                return self._task_response(
                    "ImportSnapshotResponse", self.tasks[self._tokens[token]]
                )
            task = ImportTask(
                id=f"import-snap-{secrets.token_hex(8)}",
                description=form.get("Description", ""),
                bucket=bucket,
                key=key,
                tags=_tags(form, "TagSpecification.1.Tag"),
            )
            task.history.append("active:pending")
            self.tasks[task.id] = task
            if token:
                self._tokens[token] = task.id
            failure = self._failures.pop(0) if self._failures else None
        threading.Thread(target=self._work, args=(task, failure), daemon=True).start()
        return self._task_response("ImportSnapshotResponse", task)

    def _describe(self, form: dict[str, str]) -> FrontResponse:
        wanted = [v for k, v in sorted(form.items()) if k.startswith("ImportTaskId.")]
        with self._lock:
            self.describe_calls += 1
            missing = [task_id for task_id in wanted if task_id not in self.tasks]
            if missing:
                return _error(
                    400, "InvalidConversionTaskId", f"The task ID '{missing[0]}' does not exist"
                )
            tasks = [self.tasks[t] for t in wanted] if wanted else list(self.tasks.values())
            items = "".join(f"<item>{_task_xml(task)}</item>" for task in tasks)
        return _ok(
            "DescribeImportSnapshotTasksResponse",
            f"<importSnapshotTaskSet>{items}</importSnapshotTaskSet>",
        )

    def _cancel(self, form: dict[str, str]) -> FrontResponse:
        task_id = form.get("ImportTaskId", "")
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(
                    400, "InvalidConversionTaskId", f"The task ID '{task_id}' does not exist"
                )
            if task.status != "active":
                return _error(
                    400,
                    "IncorrectState",
                    f"The import task {task_id} is {task.status}: it cannot be cancelled",
                )
            task.cancelled.set()
            task.move("deleting", "User initiated task cancelation")
        body = (
            f"<importTaskId>{task_id}</importTaskId>"
            "<previousState>active</previousState><state>deleting</state>"
        )
        return _ok("CancelImportTaskResponse", body)

    def _task_response(self, name: str, task: ImportTask) -> FrontResponse:
        return _ok(name, _task_xml(task))

    # -- the task's work ----------------------------------------------------------------

    def _work(self, task: ImportTask, failure: str | None) -> None:
        workdir = self._scratch / task.id
        workdir.mkdir()
        try:
            self._stage(task, "validating", "10")
            disk = workdir / "disk.vmdk"
            s3 = aws_peer.client("s3", self.moto_url)
            try:
                s3.download_file(task.bucket, task.key, str(disk))
            except Exception:
                raise _TaskFailed(
                    f"ClientError: Unable to retrieve the S3 object s3://{task.bucket}/{task.key}"
                ) from None
            task.disk_image_size = float(disk.stat().st_size)
            if failure:
                raise _TaskFailed(failure)
            if _vmdk_kind(disk) != "streamOptimized":
                raise _TaskFailed(UNSUPPORTED_VMDK)
            self._stage(task, "converting", "30")
            raw = workdir / "disk.raw"
            subprocess.run(
                ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "-S", "4k", str(disk), str(raw)],
                check=True,
                capture_output=True,
            )
            disk.unlink()
            snapshot_id = self._write_snapshot(task, raw)
            self._stage(task, "completing", "90")
            with self._lock:
                if task.cancelled.is_set():
                    return
                task.snapshot_id = snapshot_id
                task.move("completed", None)
        except _TaskFailed as failed:
            with self._lock:
                if task.status == "active":
                    task.move("deleting", str(failed))
            time.sleep(self.step_seconds)
            with self._lock:
                task.move("deleted", str(failed))
        except _Cancelled:
            time.sleep(self.step_seconds)
            with self._lock:
                task.move("deleted", task.status_message)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _stage(self, task: ImportTask, message: str, progress: str) -> None:
        time.sleep(self.step_seconds)
        with self._lock:
            if task.cancelled.is_set():
                raise _Cancelled
            task.move("active", message, progress)

    def _write_snapshot(self, task: ImportTask, raw: Path) -> str:
        ebs = aws_peer.client("ebs", self.moto_url)
        size = raw.stat().st_size
        snapshot = ebs.start_snapshot(
            VolumeSize=max(1, -(-size // aws_peer.GIB)),
            Description=f"Created by AWS-VMImport service for {task.id}",
            ClientToken=str(uuid.uuid4()),
        )
        snapshot_id = str(snapshot["SnapshotId"])
        zeros = bytes(aws_peer.BLOCK)
        count = 0
        with raw.open("rb") as handle:
            index = 0
            while block := handle.read(aws_peer.BLOCK):
                if block != zeros[: len(block)]:
                    block = block.ljust(aws_peer.BLOCK, b"\0")
                    ebs.put_snapshot_block(
                        SnapshotId=snapshot_id,
                        BlockIndex=index,
                        BlockData=block,
                        DataLength=aws_peer.BLOCK,
                        Checksum=_sha256_b64(block),
                        ChecksumAlgorithm="SHA256",
                    )
                    count += 1
                index += 1
        ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=count)
        return snapshot_id

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


class _TaskFailed(Exception):
    pass


class _Cancelled(Exception):
    pass


def _vmdk_kind(path: Path) -> str | None:
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "vmdk", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    data = json.loads(done.stdout).get("format-specific", {}).get("data", {})
    kind = data.get("create-type")
    return str(kind) if kind else None


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _tags(form: dict[str, str], prefix: str) -> dict[str, str]:
    tags = {}
    number = 1
    while f"{prefix}.{number}.Key" in form:
        tags[form[f"{prefix}.{number}.Key"]] = form.get(f"{prefix}.{number}.Value", "")
        number += 1
    return tags


def _task_xml(task: ImportTask) -> str:
    detail = {
        "diskImageSize": task.disk_image_size,
        "format": "VMDK",
        "progress": task.progress,
        "snapshotId": task.snapshot_id,
        "status": task.status,
        "statusMessage": task.status_message,
    }
    fields = "".join(
        f"<{name}>{escape(str(value))}</{name}>"
        for name, value in detail.items()
        if value is not None
    )
    bucket = (
        f"<userBucket><s3Bucket>{escape(task.bucket)}</s3Bucket>"
        f"<s3Key>{escape(task.key)}</s3Key></userBucket>"
    )
    tags = "".join(
        f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
        for k, v in task.tags.items()
    )
    return (
        f"<description>{escape(task.description)}</description>"
        f"<importTaskId>{task.id}</importTaskId>"
        f"<snapshotTaskDetail>{fields}{bucket}</snapshotTaskDetail>"
        f"<tagSet>{tags}</tagSet>"
    )


def _ok(name: str, body: str) -> FrontResponse:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{name} xmlns="{EC2_NAMESPACE}">'
        f"<requestId>{uuid.uuid4()}</requestId>{body}</{name}>"
    )
    return FrontResponse(200, xml.encode(), {"Content-Type": "text/xml;charset=UTF-8"})


def _error(status: int, code: str, message: str) -> FrontResponse:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    )
    return FrontResponse(status, xml.encode(), {"Content-Type": "text/xml;charset=UTF-8"})
