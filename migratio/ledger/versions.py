"""Block manifests of migrated versions: what the next version of an image starts from.

A manifest is written by the migration that made the destination record (fenced
by its lease) and read when a later migration of another image names this one
as its base; the newest finished migration of that image to that site wins.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from migratio.ledger.models import BlockManifestRow, MigrationRow
from migratio.ledger.types import KeptManifest, utcnow
from migratio.ledger.writes import fenced_row
from migratio.machine import State


def keep(session: Session, migration_id: str, owner: str, record_id: str, manifest: bytes) -> None:
    """Write (or replace: a resumed run rebuilds the same one) the migration's manifest."""
    row = fenced_row(session, migration_id, owner)
    kept = session.get(BlockManifestRow, migration_id)
    if kept is None:
        kept = BlockManifestRow(migration_id=migration_id)
        session.add(kept)
    kept.dest_site = row.dest_site
    kept.record_id = record_id
    kept.manifest = manifest
    kept.created_at = utcnow()


def latest(
    session: Session, source_site: str, dest_site: str, image_id: str
) -> KeptManifest | None:
    """The newest finished migration of ``image_id`` on that route that kept a manifest."""
    found = session.execute(
        select(MigrationRow, BlockManifestRow)
        .join(BlockManifestRow, BlockManifestRow.migration_id == MigrationRow.id)
        .where(
            MigrationRow.image_id == image_id,
            MigrationRow.source_site == source_site,
            MigrationRow.dest_site == dest_site,
            MigrationRow.state == State.DONE.value,
        )
        .order_by(MigrationRow.finished_at.desc())
        .limit(1)
    ).first()
    return None if found is None else _kept(*found)


def of_record(session: Session, dest_site: str, record_id: str) -> KeptManifest | None:
    """The manifest of a record at a site, whichever migration wrote it."""
    found = session.execute(
        select(MigrationRow, BlockManifestRow)
        .join(BlockManifestRow, BlockManifestRow.migration_id == MigrationRow.id)
        .where(BlockManifestRow.dest_site == dest_site, BlockManifestRow.record_id == record_id)
        .order_by(BlockManifestRow.created_at.desc())
        .limit(1)
    ).first()
    return None if found is None else _kept(*found)


def _kept(migration: MigrationRow, row: BlockManifestRow) -> KeptManifest:
    return KeptManifest(
        migration_id=migration.id,
        image_id=migration.image_id,
        dest_site=row.dest_site,
        record_id=row.record_id,
        result_id=migration.dest_image_id,
        manifest=bytes(row.manifest),
    )
