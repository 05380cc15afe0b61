"""Reading migrations and their audit trail, for operators and the supervisor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select

from migratio.errors import UnknownMigration, UsageError
from migratio.ledger.models import MIGRATIONS, TRANSITIONS
from migratio.ledger.rows import SNAPSHOT, migration_of, snapshot, transition_of
from migratio.ledger.types import Migration, Transition
from migratio.machine import ACTIVE, State

ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")


def get(connection: Connection, migration_id: str) -> Migration:
    migration = snapshot(connection, migration_id)
    if migration is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    return migration


def cancel_requested(connection: Connection, migration_id: str) -> bool:
    """Whether an operator asked to cancel the migration."""
    return bool(connection.scalar(_CANCEL_REQUESTED, {"m_id": migration_id}))


_CANCEL_REQUESTED = select(MIGRATIONS.c.cancel_requested).where(
    MIGRATIONS.c.id == bindparam("m_id")
)


def find(connection: Connection, prefix: str) -> Migration:
    """A migration by full id or unique id prefix (operators type short ids).

    Matched literally: only lowercase hex digits and '-' can be part of an
    id, so no LIKE wildcard or case folding can widen the match.
    """
    if not ID_PREFIX.fullmatch(prefix):
        shown = repr(prefix) if len(prefix) <= 80 else f"{prefix[:77]!r}..."
        raise UsageError(
            f"{shown} is not a migration id or id prefix (lowercase hex digits and '-')"
        )
    rows = connection.execute(
        SNAPSHOT.where(MIGRATIONS.c.id.startswith(prefix, autoescape=True)).limit(2)
    ).all()
    if len(rows) != 1:
        problem = "no" if not rows else "more than one"
        raise UnknownMigration(f"{problem} migration matches {prefix!r}")
    return migration_of(rows[0])


def migrations(connection: Connection, states: Sequence[str], limit: int | None) -> list[Migration]:
    """Newest first, those in ``states`` (all when empty), at most ``limit`` (None:
    no limit). The operator's filtered view is ``listing.Listing.newest``."""
    query = SNAPSHOT.order_by(MIGRATIONS.c.created_at.desc())
    if states:
        query = query.where(MIGRATIONS.c.state.in_(list(states)))
    if limit is not None:
        query = query.limit(limit)
    return [migration_of(row) for row in connection.execute(query)]


def history(connection: Connection, migration_id: str) -> list[Transition]:
    query = (
        select(TRANSITIONS)
        .where(TRANSITIONS.c.migration_id == migration_id)
        .order_by(TRANSITIONS.c.id)
    )
    return [transition_of(row) for row in connection.execute(query)]


def count_active(connection: Connection) -> int:
    return int(connection.scalar(_COUNT_ACTIVE) or 0)


# Asked at every turn of an idle supervisor's loop (``run --until-idle``): built once.
_COUNT_ACTIVE = select(func.count()).where(MIGRATIONS.c.state.in_([s.value for s in ACTIVE]))


def count_queued_and_failed_since(connection: Connection, since: datetime) -> tuple[int, int]:
    """Migrations waiting to start, and those that failed at or after ``since``."""
    queued = select(func.count()).where(MIGRATIONS.c.state == State.QUEUED.value)
    failed = select(func.count()).where(
        MIGRATIONS.c.state == State.FAILED.value, MIGRATIONS.c.finished_at >= since
    )
    return int(connection.scalar(queued) or 0), int(connection.scalar(failed) or 0)
