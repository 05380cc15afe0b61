"""The import-snapshot method: a stream-optimized VMDK through S3 and EC2 VM Import.

The record is the VMDK's staged S3 object (``multipart``), which
``ImportSnapshot`` then turns into an EBS snapshot. Its ClientToken is derived
from the migration id and the upload, so a run that crashed right after asking
gets the same task back, while a fresh upload gets a fresh task. The task is
polled with backoff; a task that ends ``deleted`` fails with AWS's own message.
A finished imported snapshot is never COMPLETE: migratio cannot verify what VM
Import made of the VMDK, so it reports no sha512.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from migratio import qemu, stall
from migratio.drivers.aws.encryption import import_snapshot_arguments
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.multipart import MultipartUpload
from migratio.drivers.aws.records import RecordRef, SnapshotRef, StagedObjectRef
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.snapshots import Snapshots, is_finished
from migratio.drivers.aws.staging import Staging
from migratio.drivers.aws.tags import COMPLETE_TAG, put_tags
from migratio.drivers.base import MIGRATION_ID, DestinationImage, RecordSpec, RecordStatus, Transfer
from migratio.errors import NotFound, PermanentError
from migratio.polling import Backoff, poll

log = logging.getLogger(__name__)

# VM Import takes minutes: poll often at first (a tiny disk is quick), then
# every 30 s; no deadline (AWS ends a stuck task itself), each wait a checkpoint.
TASK_BACKOFF = Backoff(first=1.0, factor=1.5, longest=30.0)
ACTIVE_TASK_STATES = frozenset({"active", "pending"})
FAILED_TASK_STATES = frozenset({"deleting", "deleted"})


class ImportSnapshot:
    """The import-snapshot upload method: records are staged S3 objects.

    clients: the site's connections (``s3``, ``ec2``).
    snapshots, staging, tasks: the site's snapshots, staged objects and import tasks.
    bucket: where VMDKs are staged (config validation requires one).
    workers: upper bound on parts uploaded at once.
    """

    # VM Import takes a stream-optimized VMDK: S3 has no sparse objects, and
    # that VMDK holds only allocated data, compressed.
    required_disk_format = "vmdk"
    reads_disk_map = False

    def __init__(
        self,
        clients: AwsClients,
        snapshots: Snapshots,
        staging: Staging,
        tasks: ImportTasks,
        bucket: str | None,
        workers: int,
    ) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.snapshots = snapshots
        self.staging = staging
        self.tasks = tasks
        self.bucket = bucket
        self.upload = MultipartUpload(clients, workers)

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        if not self.bucket:  # config validation requires it
            raise PermanentError(f"site {self.site_id}: import-snapshot needs a bucket")
        target = StagedObjectRef.for_migration(self.bucket, spec.migration_id)
        # Nothing exists at AWS until receive starts the upload.
        return DestinationImage(target.id, RecordStatus.OPEN, None, spec.size)

    def staged(self, migration_id: str) -> DestinationImage | None:
        """The migration's staged object (or unfinished upload), newest first."""
        target = self.staging.newest_of(migration_id)
        return DestinationImage(target.id, RecordStatus.OPEN, None, None) if target else None

    def receive(self, ref: RecordRef, path: Path, transfer: Transfer) -> str | None:
        """Upload and import a staged VMDK; a snapshot found (by a resumed run) is
        only confirmed finished. Returns None: an import cannot be verified."""
        match ref:
            case StagedObjectRef():
                migration_id = ref.migration_id
                snapshot_id = self._import(ref, path, transfer, migration_id)
                put_tags(
                    self.clients, snapshot_id, {MIGRATION_ID: migration_id, COMPLETE_TAG: "true"}
                )
                self.staging.delete(ref)
            case SnapshotRef():
                if not is_finished(self.snapshots.get(ref.id)):
                    raise PermanentError(
                        f"site {self.site_id}: snapshot {ref.id} is not a finished import"
                    )
            case _:
                raise PermanentError(f"site {self.site_id}: cannot import into {ref.id}")
        return None

    def _import(
        self, target: StagedObjectRef, path: Path, transfer: Transfer, migration_id: str
    ) -> str:
        """Upload, import, wait: each step journalled, so a resumed run skips what
        is done. Returns the imported snapshot's id."""
        state = transfer.load_state()
        if state.get("record") != target.id:
            state = {"method": "import-snapshot", "record": target.id}
        if state.get("snapshot_id"):
            return str(state["snapshot_id"])
        if not state.get("uploaded"):
            check_stream_optimized(path)
            self.upload.upload(target, path, transfer, state, migration_id)
        if not state.get("task_id"):
            task_id = self.tasks.start(target, migration_id, str(state["upload_id"]))
            transfer.add_artifact("import_task", task_id)
            state["task_id"] = task_id
            transfer.save_state(state)
        snapshot_id = self.tasks.wait(str(state["task_id"]), transfer, path.stat().st_size)
        transfer.add_artifact("snapshot", snapshot_id)
        state["snapshot_id"] = snapshot_id
        transfer.save_state(state)
        return snapshot_id


class ImportTasks:
    """EC2 VM Import snapshot tasks of one site: started, waited for, cancelled.

    clients: the site's connections (``ec2``).
    """

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.site_id = clients.site_id

    def start(self, target: StagedObjectRef, migration_id: str, upload_id: str) -> str:
        upload = hashlib.sha256(upload_id.encode()).hexdigest()[:16]
        with translated(self.site_id, f"import {target.id} as a snapshot"):
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
                **import_snapshot_arguments(self.clients.settings),
            )
        task_id = str(answer["ImportTaskId"])
        log.info("site %s: import task %s started for %s", self.site_id, task_id, target.id)
        return task_id

    def wait(self, task_id: str, transfer: Transfer, size: int) -> str:
        """The id of the snapshot the task made, once it has; PermanentError with
        AWS's message when the task fails."""
        # Minutes with no byte moving, each poll bounded by the read timeout.
        with stall.waiting():
            snapshot_id = poll(
                lambda: self._snapshot_made(task_id),
                TASK_BACKOFF,
                between=lambda: transfer.progress(size),
            )
        assert snapshot_id is not None  # no deadline: poll returns only with an answer
        return snapshot_id

    def _snapshot_made(self, task_id: str) -> str | None:
        detail = self.detail(task_id)
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
        return None

    def detail(self, task_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe import task {task_id}"):
            tasks = self.clients.ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])
        for task in tasks.get("ImportSnapshotTasks", []):
            if task.get("ImportTaskId") == task_id:
                return dict(task.get("SnapshotTaskDetail") or {})
        raise NotFound(f"site {self.site_id}: import task {task_id} does not exist")

    def cancel(self, task_id: str) -> None:
        """Stop a task still running; one that has ended (or is unknown) is left as is."""
        try:
            status = self.detail(task_id).get("Status")
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
