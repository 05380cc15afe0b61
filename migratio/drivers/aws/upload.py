"""How bytes become a snapshot: the upload method a site is configured with.

An AWS site has two ways to turn a disk into a snapshot (``method`` in its
settings): ``ebs-direct`` (``EbsDirect``: the record is the snapshot, written
block by block) and ``import-snapshot`` (``ImportSnapshot``: the record is a
VMDK staged in S3 that VM Import turns into a snapshot). The driver chooses one
when it is built and talks to it only through this protocol; everything after
the snapshot (the AMI) is the same for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from migratio.drivers.aws.records import RecordRef
from migratio.drivers.base import DestinationImage, RecordSpec, Transfer


class UploadMethod(Protocol):
    """One way of making a migration's snapshot from a local file."""

    @property
    def required_disk_format(self) -> str:
        """The disk format the payload must be converted to first."""
        ...

    @property
    def reads_disk_map(self) -> bool:
        """Whether ``receive`` can read a raw payload from an image through its
        ``transfer.disk_map`` (no raw copy made first)."""
        ...

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """The record bytes will go into, tagged (or keyed) with the migration id."""
        ...

    def staged(self, migration_id: str) -> DestinationImage | None:
        """A record the method keeps outside the snapshots (a staged object), if any."""
        ...

    def receive(self, ref: RecordRef, path: Path, transfer: Transfer) -> str | None:
        """Make the record's snapshot from ``path`` and tag it finished; return the
        sha512 the snapshot was verified to hold, or None when it cannot be."""
        ...
