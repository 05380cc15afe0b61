"""The ebs-direct method: the record is a snapshot, written by PutSnapshotBlock.

``StartSnapshot`` makes a pending snapshot of the payload's size (whole GiB),
tagged with the migration id; ``ebs_writer`` fills it from a sparse raw file,
sending only allocated blocks; the snapshot is then tagged finished with what
it was verified to hold (its manifest digest, and the payload's sha512 when one
was checked), which the AMI carries on. A zero block is not sent to an
unencrypted snapshot (EBS reads an unwritten block as zeros); an encrypted one
gets every block of the payload (``encryption``).

Given an earlier version of the image (``RecordSpec.base``), the snapshot starts
from that version's (``ParentSnapshotId``) and the writer sends only the blocks
that differ from it (``versions``); the snapshot and its AMI are tagged with
the earlier version. The block map of every finished snapshot is kept in the
ledger (``Transfer.keep_manifest``) for the version after it. An encrypted site
never starts from a parent (docs/aws-encryption.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from migratio.drivers.aws.blocks import GIB, volume_size_gib
from migratio.drivers.aws.ebs_writer import SnapshotWriter
from migratio.drivers.aws.encryption import start_snapshot_arguments
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.records import RecordRef, SnapshotRef
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.snapshots import Snapshots
from migratio.drivers.aws.tags import (
    BASE_AMI,
    BASE_SOURCE_UUID,
    COMPLETE_TAG,
    NAME_TAG,
    PAYLOAD_MANIFEST_SHA512,
    PAYLOAD_SHA512,
    put_tags,
    tag_list,
    tag_value,
    tags_of,
    verified_digest,
)
from migratio.drivers.aws.versions import BlockMap
from migratio.drivers.base import (
    BASE_RECORD,
    MIGRATION_ID,
    BaseVersion,
    DestinationImage,
    RecordSpec,
    RecordStatus,
    Transfer,
)
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
        self.snapshots = snapshots
        # An encrypted snapshot reads unwritten blocks as noise, not zeros (encryption.py).
        self.writer = SnapshotWriter(
            clients, snapshots, workers, write_zeros=clients.settings.encrypts
        )

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """A pending snapshot of the payload's size in whole GiB, tagged with the migration."""
        if not spec.size:
            raise PermanentError(f"site {self.site_id}: the payload size must be known")
        tags = {MIGRATION_ID: spec.migration_id, NAME_TAG: tag_value(spec.name)}
        parent: dict[str, str] = {}
        base = spec.base if spec.base and self._can_start_from(spec.base, spec.size) else None
        if base is not None:
            parent["ParentSnapshotId"] = base.record_id
            tags |= base_tags(base)
        with translated(self.site_id, "start snapshot"):
            answer = self.clients.ebs.start_snapshot(
                VolumeSize=volume_size_gib(spec.size),
                Tags=tag_list(tags),
                Description=tag_value(f"migratio {spec.migration_id}: {spec.name}"),
                Timeout=SNAPSHOT_TIMEOUT_MINUTES,
                # One token per request (AWS asks never to reuse one for another);
                # a crashed run finds its snapshot by the tag, not by the token.
                ClientToken=f"{spec.migration_id}-{time.time_ns():x}"[:64],
                **parent,
                **start_snapshot_arguments(self.clients.settings),
            )
        snapshot_id = str(answer["SnapshotId"])
        log.info(
            "site %s: started snapshot %s for migration %s%s",
            self.site_id,
            snapshot_id,
            spec.migration_id,
            f" from {base.record_id}" if base else "",
        )
        return DestinationImage(
            snapshot_id,
            RecordStatus.OPEN,
            None,
            volume_size_gib(spec.size) * GIB,
            {key: value for key, value in tags.items() if key == BASE_RECORD},
        )

    def _can_start_from(self, base: BaseVersion, size: int) -> bool:
        """A child snapshot is at least as large as its parent (StartSnapshot refuses
        a smaller one); a manifest that does not parse is no base either. An
        encrypted site starts none: StartSnapshot refuses Encrypted with a parent,
        and blocks neither version wrote would read as noise (docs/aws-encryption.md)."""
        if self.clients.settings.encrypts:
            log.info(
                "site %s: encrypted: not starting from %s (a full upload)",
                self.site_id,
                base.record_id,
            )
            return False
        try:
            parent = BlockMap.unpack(base.manifest)
        except ValueError as exc:
            log.warning("site %s: base %s unusable: %s", self.site_id, base.record_id, exc)
            return False
        return volume_size_gib(size) >= volume_size_gib(parent.size)

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
        parent = self._parent_of(ref.id, transfer)
        written = self.writer.write(ref.id, path, transfer, parent)
        transfer.keep_manifest(ref.id, written.blocks.pack())
        tags = {COMPLETE_TAG: "true", PAYLOAD_MANIFEST_SHA512: written.manifest_sha512}
        if written.payload_sha512:
            tags[PAYLOAD_SHA512] = written.payload_sha512
        put_tags(self.clients, ref.id, tags)
        return verified_digest(tags)

    def _parent_of(self, snapshot_id: str, transfer: Transfer) -> BlockMap | None:
        """What the snapshot was started from, as the transfer's base describes it;
        the snapshot's own tag must name the same one (else the blocks that became
        zero since would be wrong)."""
        started_from = tags_of(self.snapshots.get(snapshot_id)).get(BASE_RECORD)
        base = transfer.base
        if (base.record_id if base else None) != started_from:
            raise PermanentError(
                f"site {self.site_id}: snapshot {snapshot_id} was started from "
                f"{started_from or 'nothing'}, not from {base.record_id if base else 'nothing'}"
            )
        if base is None:
            return None
        try:
            return BlockMap.unpack(base.manifest)
        except ValueError as exc:
            raise PermanentError(
                f"site {self.site_id}: the block manifest of {base.record_id} is unreadable: {exc}"
            ) from None


def base_tags(base: BaseVersion) -> dict[str, str]:
    """What a snapshot started from ``base`` (and its AMI) says about it."""
    tags = {BASE_RECORD: base.record_id, BASE_SOURCE_UUID: tag_value(base.image_id)}
    if base.result_id:
        tags[BASE_AMI] = base.result_id
    return tags
