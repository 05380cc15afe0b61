"""EBS snapshots as records: found by their migration tag, judged, deleted.

A snapshot is reported COMPLETE only once migratio finished writing it and
verified what it holds (ebs-direct: every data block read, AWS checked each
block's SHA256 and the linear aggregate, and the payload's sha512 matched when
one was known); its ``sha512`` is then ``tags.verified_digest``: that payload
sha512, else the manifest digest of the data. A finished imported snapshot
stays OPEN with no sha512: migratio cannot verify what VM Import made, so
``receive`` only confirms it is finished.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import botocore.exceptions

from migratio.drivers.aws.blocks import GIB
from migratio.drivers.aws.errors import error_code, translated
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.tags import COMPLETE_TAG, tag_filters, tags_of, verified_digest
from migratio.drivers.base import MIGRATION_ID, DestinationImage, RecordStatus
from migratio.errors import NotFound, PermanentError

# Best first: the record an earlier run got furthest with.
STATUS_RANK = {RecordStatus.COMPLETE: 0, RecordStatus.OPEN: 1}


class Snapshots:
    """The EBS snapshots of one site (EC2's describe/delete calls on them).

    clients: the site's connections; only ``ec2`` is used.
    """

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.site_id = clients.site_id

    def get(self, snapshot_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe snapshot {snapshot_id}"):
            found = self.clients.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        if not found:
            raise NotFound(f"site {self.site_id}: snapshot {snapshot_id} does not exist")
        return dict(found[0])

    def state(self, snapshot_id: str) -> str | None:
        """EC2's word for the snapshot's state (pending, completed, error)."""
        with translated(self.site_id, f"describe snapshot {snapshot_id}"):
            found = self.clients.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        return str(found[0].get("State")) if found else None

    def tagged(self, tags: Mapping[str, str], action: str) -> list[dict[str, Any]]:
        """Our snapshots carrying all of ``tags``, newest first (among equals the
        latest attempt wins)."""
        with translated(self.site_id, action):
            pages = self.clients.ec2.get_paginator("describe_snapshots").paginate(
                OwnerIds=["self"], Filters=tag_filters(tags)
            )
            found = [snapshot for page in pages for snapshot in page["Snapshots"]]
        found.sort(key=lambda snapshot: str(snapshot.get("StartTime")), reverse=True)
        # Re-checked here: a filter the endpoint did not apply must not match.
        return [s for s in found if tags_of(s).items() >= tags.items()]

    def best_of(self, migration_id: str) -> DestinationImage | None:
        """The migration's snapshot an earlier run got furthest with, if any."""
        records = [
            snapshot_image(snapshot)
            for snapshot in self.tagged({MIGRATION_ID: migration_id}, "find the record")
        ]
        return min(records, key=lambda r: STATUS_RANK.get(r.status, 9), default=None)

    def finished_of(self, migration_id: str) -> dict[str, Any]:
        """The migration's finished snapshot, to register an AMI from."""
        for snapshot in self.tagged({MIGRATION_ID: migration_id}, "find the snapshot"):
            if is_finished(snapshot):
                return snapshot
        raise PermanentError(
            f"site {self.site_id}: migration {migration_id} has no finished snapshot to register"
        )

    def finished(self, snapshot_id: str) -> dict[str, Any]:
        """The snapshot, refused unless migratio made and finished it."""
        snapshot = self.get(snapshot_id)
        if not tags_of(snapshot).get(MIGRATION_ID):
            raise PermanentError(f"site {self.site_id}: snapshot {snapshot_id} is not migratio's")
        if not is_finished(snapshot):
            raise PermanentError(f"site {self.site_id}: snapshot {snapshot_id} is not finished")
        return snapshot

    def delete(self, snapshot_id: str, release: Callable[[str], None]) -> None:
        """Delete the snapshot; gone is fine. One an AMI still uses (a crash left
        it untracked) is freed first by ``release(migration_id)``."""
        try:
            with translated(self.site_id, f"delete snapshot {snapshot_id}"):
                try:
                    self.clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
                    return
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "InvalidSnapshot.InUse":
                        raise
                migration_id = tags_of(self.get(snapshot_id)).get(MIGRATION_ID)
                if migration_id:
                    release(migration_id)
                self.clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
        except NotFound:
            return


def is_finished(snapshot: Mapping[str, Any]) -> bool:
    """Written (or imported) to the end by migratio, and completed by AWS."""
    return tags_of(snapshot).get(COMPLETE_TAG) == "true" and snapshot.get("State") == "completed"


def snapshot_image(snapshot: Mapping[str, Any]) -> DestinationImage:
    """A described snapshot as a record, in the engine's words."""
    tags = tags_of(snapshot)
    finished = is_finished(snapshot)
    sha512 = verified_digest(tags) if finished else None
    if snapshot.get("State") == "error":
        status = RecordStatus.BROKEN
    elif finished and sha512:
        status = RecordStatus.COMPLETE
    else:
        # Being written, being completed, or an import migratio cannot verify.
        status = RecordStatus.OPEN
    return DestinationImage(
        id=str(snapshot["SnapshotId"]),
        status=status,
        sha512=sha512,
        size=volume_bytes(snapshot),
        properties=tags,
    )


def volume_bytes(snapshot: Mapping[str, Any]) -> int | None:
    size = snapshot.get("VolumeSize")
    return int(size) * GIB if size else None
