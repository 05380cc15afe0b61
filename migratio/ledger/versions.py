"""Block manifests of migrated versions: what the next version of an image starts from.

A manifest is written by the migration that made the destination record (fenced
by its lease) and read when a later migration of another image names this one
as its base; the newest finished migration of that image to that site wins.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select
from sqlalchemy.orm import Session

from migratio.ledger.models import MANIFESTS, MIGRATIONS, BlockManifestRow
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
    connection: Connection, source_site: str, dest_site: str, image_id: str
) -> KeptManifest | None:
    """The newest finished migration of ``image_id`` on that route that kept a manifest."""
    found = connection.execute(
        _KEPT.where(
            MIGRATIONS.c.image_id == image_id,
            MIGRATIONS.c.source_site == source_site,
            MIGRATIONS.c.dest_site == dest_site,
            MIGRATIONS.c.state == State.DONE.value,
        )
        .order_by(MIGRATIONS.c.finished_at.desc())
        .limit(1)
    ).first()
    return None if found is None else _kept(found)


def of_record(connection: Connection, dest_site: str, record_id: str) -> KeptManifest | None:
    """The manifest of a record at a site, whichever migration wrote it."""
    found = connection.execute(
        _KEPT.where(MANIFESTS.c.dest_site == dest_site, MANIFESTS.c.record_id == record_id)
        .order_by(MANIFESTS.c.created_at.desc())
        .limit(1)
    ).first()
    return None if found is None else _kept(found)


def _kept(row: Row[Any, Any, Any, Any, Any, Any]) -> KeptManifest:
    return KeptManifest(**{**row._mapping, "manifest": bytes(row.manifest)})


# A kept manifest with the migration that made it, as ``KeptManifest``'s fields.
_KEPT = select(
    MIGRATIONS.c.id.label("migration_id"),
    MIGRATIONS.c.image_id,
    MANIFESTS.c.dest_site,
    MANIFESTS.c.record_id,
    MIGRATIONS.c.dest_image_id.label("result_id"),
    MANIFESTS.c.manifest,
).join_from(MIGRATIONS, MANIFESTS, MANIFESTS.c.migration_id == MIGRATIONS.c.id)
