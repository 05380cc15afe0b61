"""Leases: which daemon drives a migration now.

Taking a lease is a compare-and-set on the row (``UPDATE ... WHERE`` the lease
is free), so two daemons racing for the same migration cannot both win, on
SQLite and PostgreSQL alike. A lease that is not renewed expires, and any
daemon may then take the migration over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, not_, or_, select, update
from sqlalchemy.orm import Session

from migratio import metrics
from migratio.ledger.models import MigrationRow
from migratio.ledger.rows import audit, migration_of, rowcount
from migratio.ledger.slots import full_sites, held_back, note_waiting, take_turns
from migratio.ledger.types import Migration, utcnow
from migratio.machine import ACTIVE, TERMINAL

# Due migrations looked at per claim: enough that a few lost races still find one.
CLAIM_CANDIDATES = 8


def lease_free(now: datetime) -> ColumnElement[bool]:
    """Nobody holds the lease, or its holder let it expire."""
    return or_(MigrationRow.lease_owner.is_(None), MigrationRow.lease_expires_at < now)


def claim(
    session: Session,
    owner: str,
    lease_seconds: float,
    skip: Sequence[str],
    slots: Mapping[str, int],
) -> Migration | None:
    """Take the lease of one due migration (or one asked to cancel), oldest due
    first; a queued one only while its destination has a free slot (``slots``)."""
    if slots:
        take_turns(session)
    now = utcnow()
    due = and_(
        MigrationRow.state.in_([s.value for s in ACTIVE]),
        or_(MigrationRow.next_attempt_at <= now, MigrationRow.cancel_requested.is_(True)),
        lease_free(now),
    )
    candidates = select(MigrationRow.id, MigrationRow.lease_owner).where(due)
    full = full_sites(session, slots, now) if slots else {}
    if full:
        note_waiting(session, full, slots, due, now)
        candidates = candidates.where(not_(held_back(full)))
    if skip:
        candidates = candidates.where(MigrationRow.id.not_in(list(skip)))
    candidates = candidates.order_by(MigrationRow.next_attempt_at).limit(CLAIM_CANDIDATES)
    for migration_id, previous_owner in session.execute(candidates).all():
        if not _take(session, migration_id, owner, lease_seconds, now):
            continue
        row = session.get(MigrationRow, migration_id)
        assert row is not None
        if previous_owner and previous_owner != owner:
            note = f"taken over from {previous_owner} after its lease expired"
            session.add(audit(row.id, row.state, row.state, now, note))
            metrics.lease_taken_over()
        return migration_of(row)
    return None


def acquire(session: Session, migration_id: str, owner: str, lease_seconds: float) -> bool:
    """Take the lease of one migration if nobody holds it (operator commands)."""
    return _take(session, migration_id, owner, lease_seconds, utcnow())


def renew(
    session: Session, owner: str, migration_ids: Sequence[str], lease_seconds: float
) -> set[str]:
    """Extend our leases; return the ids whose lease we no longer hold."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    lost: set[str] = set()
    for migration_id in migration_ids:
        renewed = rowcount(
            session,
            update(MigrationRow)
            .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
            .values(lease_expires_at=expires),
        )
        if not renewed:
            lost.add(migration_id)
    # A migration that has just ended gave its lease up with its last transition
    # (its worker is still cleaning up): finished, not lost to another daemon.
    if lost:
        ended = select(MigrationRow.id).where(
            MigrationRow.id.in_(lost), MigrationRow.state.in_([s.value for s in TERMINAL])
        )
        lost -= set(session.scalars(ended))
    return lost


def release(session: Session, migration_id: str, owner: str) -> None:
    rowcount(
        session,
        update(MigrationRow)
        .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None),
    )


def _take(
    session: Session, migration_id: str, owner: str, lease_seconds: float, now: datetime
) -> bool:
    won = rowcount(
        session,
        update(MigrationRow)
        .where(MigrationRow.id == migration_id, lease_free(now))
        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds)),
    )
    return bool(won)
