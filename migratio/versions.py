"""Which earlier version of an image a new destination record starts from.

A new version of a template is mostly the old one. When the previous version
(named when the migration was submitted, else the source's ``base_image_ref``)
was migrated to the same destination and its record is still there, a
destination that can (``VersionedDestination``) starts the new record from it
and sends only what changed. Anything else -- never migrated there, its record
deleted since, a destination that cannot -- is a full upload, and the audit
trail says why.
"""

from __future__ import annotations

from migratio.drivers.base import (
    BASE_RECORD,
    BaseVersion,
    DestinationImage,
    VersionedDestination,
)
from migratio.errors import PermanentError
from migratio.ledger.store import KeptManifest
from migratio.step import Step


def base_for_new_record(step: Step) -> BaseVersion | None:
    """The version a record about to be created may start from, or None (noted why)."""
    migration = step.migration
    image_id = migration.base_image_id or step.source_image.base_image_ref
    if not image_id or image_id == migration.image_id:
        return None
    destination = step.destination
    site = migration.dest_site
    if not (isinstance(destination, VersionedDestination) and destination.takes_base_version):
        if migration.base_image_id:
            step.note(f"base version {image_id}: {site} cannot start from it; sending all of it")
        return None
    kept = step.ledger.latest_version(migration.source_site, site, image_id)
    if kept is None:
        step.note(
            f"base version {image_id}: not migrated to {site} (no block manifest in the "
            "ledger); sending all of it"
        )
        return None
    record = destination.get_record(kept.record_id)
    if record is None or not record.is_complete:
        step.note(
            f"base version {image_id}: its record {kept.record_id} at {site} (migration "
            f"{kept.migration_id}) is gone; sending all of it"
        )
        return None
    return _base(kept)


def base_of_record(step: Step, record: DestinationImage) -> BaseVersion | None:
    """The version a record (new or found again) was started from, per its
    ``BASE_RECORD``; a record started from one whose manifest the ledger lacks
    cannot be finished correctly (its blocks that became zero are unknown)."""
    parent = record.properties.get(BASE_RECORD)
    if not parent:
        return None
    kept = step.ledger.version_of_record(step.migration.dest_site, parent)
    if kept is None:
        raise PermanentError(
            f"record {record.id} was started from {parent}, whose block manifest "
            "the ledger does not hold"
        )
    return _base(kept)


def _base(kept: KeptManifest) -> BaseVersion:
    return BaseVersion(
        kept.image_id, kept.migration_id, kept.record_id, kept.result_id, kept.manifest
    )
