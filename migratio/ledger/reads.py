"""Reading migrations and their audit trail, for operators and the supervisor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migratio.errors import UnknownMigration, UsageError
from migratio.ledger.models import MigrationRow, TransitionRow
from migratio.ledger.rows import migration_of, transition_of
from migratio.ledger.types import Migration, Transition
from migratio.machine import ACTIVE, State

ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


def get(session: Session, migration_id: str) -> Migration:
    row = session.get(MigrationRow, migration_id)
    if row is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    return migration_of(row)


def cancel_requested(session: Session, migration_id: str) -> bool:
    """Whether an operator asked to cancel the migration."""
    query = select(MigrationRow.cancel_requested).where(MigrationRow.id == migration_id)
    return bool(session.scalar(query))


def find(session: Session, prefix: str) -> Migration:
    """A migration by full id or unique id prefix (operators type short ids).

    Matched literally: only lowercase hex digits and '-' can be part of an
    id, so no LIKE wildcard or case folding can widen the match.
    """
    if not ID_PREFIX.fullmatch(prefix):
        shown = repr(prefix) if len(prefix) <= 80 else f"{prefix[:77]!r}..."
        raise UsageError(
            f"{shown} is not a migration id or id prefix (lowercase hex digits and '-')"
        )
    rows = session.scalars(
        select(MigrationRow).where(MigrationRow.id.startswith(prefix, autoescape=True)).limit(2)
    ).all()
    if len(rows) != 1:
        problem = "no" if not rows else "more than one"
        raise UnknownMigration(f"{problem} migration matches {prefix!r}")
    return migration_of(rows[0])


def migrations(session: Session, states: Sequence[str], limit: int | None) -> list[Migration]:
    """Newest first, those in ``states`` (all when empty), at most ``limit`` (None:
    no limit). The operator's filtered view is ``listing.Listing.newest``."""
    query = select(MigrationRow).order_by(MigrationRow.created_at.desc())
    if states:
        query = query.where(MigrationRow.state.in_(list(states)))
    if limit is not None:
        query = query.limit(limit)
    return [migration_of(row) for row in session.scalars(query)]


def history(session: Session, migration_id: str) -> list[Transition]:
    query = (
        select(TransitionRow)
        .where(TransitionRow.migration_id == migration_id)
        .order_by(TransitionRow.id)
    )
    return [transition_of(row) for row in session.scalars(query)]


def count_active(session: Session) -> int:
    query = select(func.count()).where(MigrationRow.state.in_([s.value for s in ACTIVE]))
    return int(session.scalar(query) or 0)


def count_queued_and_failed_since(session: Session, since: datetime) -> tuple[int, int]:
    """Migrations waiting to start, and those that failed at or after ``since``."""
    queued = select(func.count()).where(MigrationRow.state == State.QUEUED.value)
    failed = select(func.count()).where(
        MigrationRow.state == State.FAILED.value, MigrationRow.finished_at >= since
    )
    return int(session.scalar(queued) or 0), int(session.scalar(failed) or 0)
