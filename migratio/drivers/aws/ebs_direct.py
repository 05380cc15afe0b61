"""The ebs-direct method: the record is a snapshot, written by PutSnapshotBlock.

``StartSnapshot`` makes a pending snapshot of the payload's size (whole GiB),
tagged with the migration id; ``ebs_writer`` fills it from a sparse raw file,
sending only allocated blocks; the snapshot is then tagged finished with what
it was verified to hold (its manifest digest, and the payload's sha512 when one
was checked), which the AMI carries on. A zero block is never sent: EBS reads
an unwritten block as zeros.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from migratio.drivers.aws.blocks import GIB, volume_size_gib
from migratio.drivers.aws.ebs_writer import SnapshotWriter
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.records import RecordRef, SnapshotRef
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.snapshots import Snapshots
from migratio.drivers.aws.tags import (
    COMPLETE_TAG,
    NAME_TAG,
    PAYLOAD_MANIFEST_SHA512,
    PAYLOAD_SHA512,
    put_tags,
    tag_list,
    tag_value,
    verified_digest,
)
from migratio.drivers.base import MIGRATION_ID, DestinationImage, RecordSpec, RecordStatus, Transfer
from migratio.errors import PermanentError

log = logging.getLogger(__name__)

# A pending snapshot that is not written to for this long goes into the error
# state (StartSnapshot's Timeout, 10..4320 minutes); 12 h outlasts a daemon
# outage and the retry policy's whole schedule.
SNAPSHOT_TIMEOUT_MINUTES = 720


class EbsDirect:
    """The ebs-direct upload method: records are snapshots filled block by block.

    clients: the site's connections (``ebs`` for blocks, ``ec2`` for state and tags).
    snapshots: the site's snapshots.
    workers: PutSnapshotBlock calls in flight at once.
    """

    # Read sparsely, so only allocated data crosses the wire; from the staged
    # image itself where its disk map allows (no raw copy, no conversion pass).
    required_disk_format = "raw"
    reads_disk_map = True

    def __init__(self, clients: AwsClients, snapshots: Snapshots, workers: int) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.writer = SnapshotWriter(clients, snapshots, workers)

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """A pending snapshot of the payload's size in whole GiB, tagged with the migration."""
        if not spec.size:
            raise PermanentError(f"site {self.site_id}: the payload size must be known")
        tags = {MIGRATION_ID: spec.migration_id, NAME_TAG: tag_value(spec.name)}
        with translated(self.site_id, "start snapshot"):
            answer = self.clients.ebs.start_snapshot(
                VolumeSize=volume_size_gib(spec.size),
                Tags=tag_list(tags),
                Description=tag_value(f"migratio {spec.migration_id}: {spec.name}"),
                Timeout=SNAPSHOT_TIMEOUT_MINUTES,
                # One token per request (AWS asks never to reuse one for another);
                # a crashed run finds its snapshot by the tag, not by the token.
                ClientToken=f"{spec.migration_id}-{time.time_ns():x}"[:64],
            )
        snapshot_id = str(answer["SnapshotId"])
        log.info(
            "site %s: started snapshot %s for migration %s",
            self.site_id,
            snapshot_id,
            spec.migration_id,
        )
        return DestinationImage(
            snapshot_id, RecordStatus.OPEN, None, volume_size_gib(spec.size) * GIB
        )

    def staged(self, migration_id: str) -> DestinationImage | None:
        """Nothing is staged outside the snapshot itself."""
        return None

    def receive(self, ref: RecordRef, path: Path, transfer: Transfer) -> str | None:
        """Write the file into the snapshot; return what it was verified to hold
        (``tags.verified_digest``: the payload's sha512 when the transfer named
        one, else the manifest digest)."""
        if not isinstance(ref, SnapshotRef):
            raise PermanentError(
                f"site {self.site_id}: ebs-direct writes only snapshots, not {ref.id}"
            )
        written = self.writer.write(ref.id, path, transfer)
        tags = {COMPLETE_TAG: "true", PAYLOAD_MANIFEST_SHA512: written.manifest_sha512}
        if written.payload_sha512:
            tags[PAYLOAD_SHA512] = written.payload_sha512
        put_tags(self.clients, ref.id, tags)
        return verified_digest(tags)
