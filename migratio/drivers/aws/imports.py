"""The import-snapshot method: a stream-optimized VMDK through S3 and EC2 VM Import.

The VMDK goes to S3 as a multipart upload (parts in parallel; a resumed run lists
the parts S3 holds and sends only missing or different ones), then
``ImportSnapshot`` turns it into an EBS snapshot. Its ClientToken is derived from
the migration id and the upload, so a run that crashed right after asking gets
the same task back, while a fresh upload gets a fresh task. The task is polled
with backoff; a task that ends ``deleted`` fails with AWS's own message.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migratio import qemu
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.base import MIGRATION_ID, Transfer
from migratio.errors import NotFound, PermanentError

log = logging.getLogger(__name__)

MIB = 1 << 20
# S3 allows 10,000 parts of at least 5 MiB (the last may be smaller).
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
# Parts are read whole into memory by the thread sending them; this bounds it.
MAX_PARALLEL_PARTS = 4
POLL = (1.0, 1.5, 30.0)  # first delay, factor, longest delay between task polls
ACTIVE_TASK_STATES = frozenset({"active", "pending"})
FAILED_TASK_STATES = frozenset({"deleting", "deleted"})
S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Object:
    """Where a migration's VMDK is staged: ``s3://bucket/key`` is its record id."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, ref: str) -> S3Object:
        bucket, _, key = ref.removeprefix(S3_SCHEME).partition("/")
        if not ref.startswith(S3_SCHEME) or not bucket or not key:
            raise PermanentError(f"{ref!r} is not an s3:// object reference")
        return cls(bucket, key)

    @classmethod
    def for_migration(cls, bucket: str, migration_id: str) -> S3Object:
        # A fresh key per record: a record removed and made again (after a failed
        # import, say) must not inherit the old one's upload or import task.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"
        return cls(bucket, f"{prefix_for(migration_id)}{stamp}.vmdk")


def prefix_for(migration_id: str) -> str:
    return f"migratio/{migration_id}/"


class SnapshotImport:
    """Turns a local stream-optimized VMDK into an EBS snapshot; returns its id.

    clients: the site's connections (``s3`` and ``ec2``).
    workers: upper bound on parts sent at once (also capped at MAX_PARALLEL_PARTS,
        since each part in flight is held in memory).
    """

    def __init__(self, clients: AwsClients, workers: int) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.workers = workers

    def run(self, target: S3Object, path: Path, transfer: Transfer, migration_id: str) -> str:
        state = transfer.load_state()
        if state.get("record") != target.uri:
            state = {"method": "import-snapshot", "record": target.uri}
        if state.get("snapshot_id"):
            return str(state["snapshot_id"])
        if not state.get("uploaded"):
            check_stream_optimized(path)
            self._upload(target, path, transfer, state, migration_id)
        if not state.get("task_id"):
            task_id = self._start_import(target, migration_id, str(state["upload_id"]))
            transfer.add_artifact("import_task", task_id)
            state["task_id"] = task_id
            transfer.save_state(state)
        snapshot_id = self._await_task(str(state["task_id"]), transfer, path.stat().st_size)
        transfer.add_artifact("snapshot", snapshot_id)
        state["snapshot_id"] = snapshot_id
        transfer.save_state(state)
        return snapshot_id

    # -- S3 -------------------------------------------------------------------

    def _upload(
        self,
        target: S3Object,
        path: Path,
        transfer: Transfer,
        state: dict[str, Any],
        migration_id: str,
    ) -> None:
        size = path.stat().st_size
        held = self._uploaded_parts(target, state.get("upload_id"))
        if held is None:
            state["upload_id"] = self._create_upload(target, migration_id)
            state["part_size"] = _part_size(size)
            held = {}
            transfer.save_state(state)
        parts = _Parts(size, int(state.get("part_size") or _part_size(size)))
        upload_id = str(state["upload_id"])
        with path.open("rb") as handle:
            etags = parts.matching(handle.fileno(), held)
            todo = [number for number in parts.numbers if number not in etags]
            if todo:
                log.info(
                    "site %s: uploading %d of %d parts of %s",
                    self.site_id,
                    len(todo),
                    len(parts.numbers),
                    target.uri,
                )
            etags |= self._send_parts(target, upload_id, handle.fileno(), parts, todo, transfer)
        transfer.progress(size)
        self._complete_upload(target, upload_id, etags)
        state["uploaded"] = True
        transfer.save_state(state)

    def _send_parts(
        self,
        target: S3Object,
        upload_id: str,
        fd: int,
        parts: _Parts,
        todo: list[int],
        transfer: Transfer,
    ) -> dict[int, str]:
        """Upload the parts numbered in ``todo``, a few at a time; return their ETags."""
        etags: dict[int, str] = {}
        done_bytes = parts.size - sum(parts.length(number) for number in todo)
        parallel = max(1, min(self.workers, MAX_PARALLEL_PARTS, len(todo)))
        waiting = list(reversed(todo))
        futures: dict[Future[str], int] = {}
        with ThreadPoolExecutor(parallel, thread_name_prefix="s3-part") as pool:
            try:
                while waiting or futures:
                    while waiting and len(futures) < parallel:
                        number = waiting.pop()
                        futures[
                            pool.submit(self._put_part, target, upload_id, fd, parts, number)
                        ] = number
                    transfer.progress(done_bytes)
                    done, _ = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        number = futures.pop(future)
                        etags[number] = future.result()
                        done_bytes += parts.length(number)
            finally:
                for future in futures:
                    future.cancel()
        return etags

    def _uploaded_parts(
        self, target: S3Object, upload_id: object
    ) -> dict[int, tuple[str, int]] | None:
        """Parts S3 holds for the journalled upload; None when there is none to resume."""
        if not isinstance(upload_id, str):
            return None
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        try:
            with translated(self.site_id, f"list uploaded parts of {target.uri}"):
                while True:
                    page = self.clients.s3.list_parts(
                        Bucket=target.bucket,
                        Key=target.key,
                        UploadId=upload_id,
                        PartNumberMarker=marker,
                    )
                    for part in page.get("Parts", []):
                        parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
                    if not page.get("IsTruncated"):
                        return parts
                    marker = int(page["NextPartNumberMarker"])
        except NotFound:
            return None

    def _create_upload(self, target: S3Object, migration_id: str) -> str:
        with translated(self.site_id, f"start upload of {target.uri}"):
            answer = self.clients.s3.create_multipart_upload(
                Bucket=target.bucket,
                Key=target.key,
                ContentType="application/octet-stream",
                Metadata={MIGRATION_ID.replace("_", "-"): migration_id},
            )
        return str(answer["UploadId"])

    def _put_part(
        self, target: S3Object, upload_id: str, fd: int, parts: _Parts, number: int
    ) -> str:
        data = os.pread(fd, parts.length(number), parts.offset(number))
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        with translated(self.site_id, f"upload part {number} of {target.uri}"):
            answer = self.clients.s3.upload_part(
                Bucket=target.bucket,
                Key=target.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                # S3 refuses a part whose bytes do not match (moto does not check).
                ContentMD5=base64.b64encode(digest).decode("ascii"),
            )
        return str(answer["ETag"])

    def _complete_upload(self, target: S3Object, upload_id: str, etags: dict[int, str]) -> None:
        parts = [{"PartNumber": number, "ETag": etags[number]} for number in sorted(etags)]
        try:
            with translated(self.site_id, f"complete upload of {target.uri}"):
                self.clients.s3.complete_multipart_upload(
                    Bucket=target.bucket,
                    Key=target.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except NotFound:
            # Completed by a run that crashed before journalling it: the object is there.
            with translated(self.site_id, f"check {target.uri}"):
                self.clients.s3.head_object(Bucket=target.bucket, Key=target.key)

    # -- VM Import --------------------------------------------------------------

    def _start_import(self, target: S3Object, migration_id: str, upload_id: str) -> str:
        upload = hashlib.sha256(upload_id.encode()).hexdigest()[:16]
        with translated(self.site_id, f"import {target.uri} as a snapshot"):
            answer = self.clients.ec2.import_snapshot(
                ClientToken=f"{migration_id}-{upload}"[:64],
                Description=f"migratio {migration_id}",
                DiskContainer={
                    "Description": f"migratio {migration_id}",
                    "Format": "VMDK",
                    "UserBucket": {"S3Bucket": target.bucket, "S3Key": target.key},
                },
                TagSpecifications=[
                    {
                        "ResourceType": "import-snapshot-task",
                        "Tags": [{"Key": MIGRATION_ID, "Value": migration_id}],
                    }
                ],
            )
        task_id = str(answer["ImportTaskId"])
        log.info("site %s: import task %s started for %s", self.site_id, task_id, target.uri)
        return task_id

    def _await_task(self, task_id: str, transfer: Transfer, size: int) -> str:
        delay, factor, longest = POLL
        while True:
            detail = self.task_detail(task_id)
            status = str(detail.get("Status") or "")
            if status == "completed":
                if not detail.get("SnapshotId"):
                    raise PermanentError(
                        f"site {self.site_id}: import task {task_id} completed without a snapshot"
                    )
                return str(detail["SnapshotId"])
            if status in FAILED_TASK_STATES:
                message = detail.get("StatusMessage") or "no reason given"
                raise PermanentError(
                    f"site {self.site_id}: import task {task_id} failed ({status}): {message}"
                )
            log.debug(
                "site %s: import task %s %s %s%%",
                self.site_id,
                task_id,
                detail.get("StatusMessage") or status,
                detail.get("Progress") or "?",
            )
            transfer.progress(size)
            time.sleep(delay)
            delay = min(longest, delay * factor)

    def task_detail(self, task_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe import task {task_id}"):
            tasks = self.clients.ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])
        for task in tasks.get("ImportSnapshotTasks", []):
            if task.get("ImportTaskId") == task_id:
                return dict(task.get("SnapshotTaskDetail") or {})
        raise NotFound(f"site {self.site_id}: import task {task_id} does not exist")

    def cancel(self, task_id: str) -> None:
        """Stop a task still running; one that has ended (or is unknown) is left as is."""
        try:
            status = self.task_detail(task_id).get("Status")
        except NotFound:
            return
        if status not in ACTIVE_TASK_STATES:
            return
        with translated(self.site_id, f"cancel import task {task_id}"):
            self.clients.ec2.cancel_import_task(
                ImportTaskId=task_id, CancelReason="migratio: migration ended"
            )


def check_stream_optimized(path: Path) -> None:
    """VM Import takes only stream-optimized VMDKs; refuse others before uploading."""
    described = qemu.info(path, "vmdk")
    specific = described.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    kind = data.get("create-type") if isinstance(data, dict) else None
    if kind != "streamOptimized":
        raise PermanentError(
            f"{path.name} is a {kind or 'non-sparse'} VMDK; AWS VM Import takes only "
            "stream-optimized VMDKs"
        )


@dataclass(frozen=True)
class _Parts:
    """A file of ``size`` bytes cut into multipart-upload parts of ``part_size``."""

    size: int
    part_size: int

    @property
    def numbers(self) -> range:
        return range(1, max(1, -(-self.size // self.part_size)) + 1)

    def offset(self, number: int) -> int:
        return (number - 1) * self.part_size

    def length(self, number: int) -> int:
        return max(0, min(self.part_size, self.size - self.offset(number)))

    def matching(self, fd: int, held: dict[int, tuple[str, int]]) -> dict[int, str]:
        """The ETags of parts S3 already holds with exactly our bytes (ETag = MD5)."""
        etags: dict[int, str] = {}
        for number, (etag, length) in held.items():
            if number in self.numbers and length == self.length(number):
                data = os.pread(fd, length, self.offset(number))
                if etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest():
                    etags[number] = etag
        return etags


def _part_size(size: int) -> int:
    wanted = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-wanted // MIB) * MIB)
