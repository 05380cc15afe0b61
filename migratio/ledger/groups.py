"""Fan-out groups: the migrations of one image from one source to several
destinations, which share one read of the source.

A group is only a shared ``group_id`` on its members: each member keeps its own
state, retries, lease and audit trail. What the members share (the staged source
and its conversions, in the work dir) belongs to the group as long as one member
is still active; the member that ends last removes it (``migratio.cleanup``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from migratio.ledger.models import MIGRATIONS, MigrationRow
from migratio.ledger.rows import SNAPSHOT, migration_of, new_migration
from migratio.ledger.types import Migration
from migratio.ledger.writes import Notify, created
from migratio.machine import ACTIVE, State

# (image, source site): what the members of a group have in common.
Origin = tuple[str, str]


def new_group_id() -> str:
    return str(uuid.uuid4())


def create(
    session: Session,
    notify: Notify,
    source_site: str,
    dest_sites: Sequence[str],
    image_id: str,
    message: str,
    base_image_id: str | None = None,
) -> list[Migration]:
    """One migration per destination, in one group (and this one transaction)."""
    group_id = new_group_id() if len(dest_sites) > 1 else None
    rows = [
        new_migration(source_site, dest, image_id, None, base_image_id, group_id=group_id)
        for dest in dest_sites
    ]
    start = rows[0].created_at
    for order, row in enumerate(rows):  # submitted at once, listed in the order given
        row.created_at = row.updated_at = start + timedelta(microseconds=order)
        row.next_attempt_at = start
    session.add_all(rows)
    session.flush()
    for row in rows:
        created(session, notify, row, message)
    return [migration_of(row) for row in rows]


def members(connection: Connection, group_id: str) -> list[Migration]:
    """Every migration of the group, oldest first."""
    query = SNAPSHOT.where(MIGRATIONS.c.group_id == group_id).order_by(
        MIGRATIONS.c.created_at, MIGRATIONS.c.id
    )
    return [migration_of(row) for row in connection.execute(query)]


def others_active(connection: Connection, group_id: str, migration_id: str) -> bool:
    """Whether a member other than ``migration_id`` may still use the group's files.

    Each member asks after its own end is committed, so of two members ending at
    once at least one sees the other ended: the shared files are never left behind.
    """
    query = select(MIGRATIONS.c.id).where(
        MIGRATIONS.c.group_id == group_id,
        MIGRATIONS.c.id != migration_id,
        MIGRATIONS.c.state.in_([s.value for s in ACTIVE]),
    )
    return connection.scalars(query.limit(1)).first() is not None


def joinable(session: Session, origins: set[Origin], since: datetime) -> dict[Origin, MigrationRow]:
    """For each origin, the newest migration a new job may join in a group: created
    after ``since`` and not yet reading alone (still queued, or grouped already)."""
    if not origins:
        return {}
    query = (
        select(MigrationRow)
        .where(
            MigrationRow.image_id.in_({image for image, _ in origins}),
            MigrationRow.created_at >= since,
            MigrationRow.state.in_([s.value for s in ACTIVE]),
        )
        .order_by(MigrationRow.created_at)
    )
    found: dict[Origin, MigrationRow] = {}
    for row in session.scalars(query):  # oldest first, so the newest wins
        origin = (row.image_id, row.source_site)
        if origin in origins and (row.state == State.QUEUED or row.group_id is not None):
            found[origin] = row
    return found


def join(row: MigrationRow, peer: MigrationRow) -> None:
    """Put ``row`` in ``peer``'s group, founding the group if ``peer`` was alone."""
    if peer.group_id is None:
        peer.group_id = new_group_id()
    row.group_id = peer.group_id
