"""Artifacts: what a migration created (temporary files, destination records) and
whether each was kept as the result or removed.

An artifact is written down before it exists, so a crash never leaves one
nobody knows of; cleanup removes every artifact still present unless it is
kept, and a removal that failed waits for its retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Select,
    bindparam,
    insert,
    or_,
    select,
    update,
)

from migratio.ledger.models import ARTIFACTS, MIGRATIONS
from migratio.ledger.rows import artifact_of, rowcount
from migratio.ledger.types import Artifact, ArtifactStatus, utcnow
from migratio.machine import TERMINAL


def removal_due(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """Removing the artifact was never tried, or its retry time has come."""
    return or_(ARTIFACTS.c.next_attempt_at.is_(None), ARTIFACTS.c.next_attempt_at <= now)


def add(connection: Connection, migration_id: str, kind: str, ref: str, site: str | None) -> None:
    """Write the artifact down once, however often a resumed step announces it."""
    exists = connection.scalar(
        select(ARTIFACTS.c.id).where(
            ARTIFACTS.c.migration_id == migration_id,
            ARTIFACTS.c.kind == kind,
            ARTIFACTS.c.ref == ref,
            ARTIFACTS.c.status == ArtifactStatus.PRESENT,
        )
    )
    if exists is None:
        connection.execute(
            insert(ARTIFACTS).values(
                migration_id=migration_id,
                kind=kind,
                site=site,
                ref=ref,
                status=ArtifactStatus.PRESENT.value,
                created_at=utcnow(),
                attempts=0,
            )
        )


def listing(
    connection: Connection, migration_id: str, status: ArtifactStatus | None, due_only: bool
) -> list[Artifact]:
    """The migration's artifacts, oldest first; ``due_only``: those whose
    removal is not waiting for a retry."""
    query = _LISTINGS[(status is not None, due_only)]
    parameters = {"a_migration": migration_id, "a_status": status, "a_now": utcnow()}
    return [artifact_of(row) for row in connection.execute(query, parameters)]


def _listing(by_status: bool, due_only: bool) -> Select[Any]:
    query = (
        select(ARTIFACTS)
        .where(ARTIFACTS.c.migration_id == bindparam("a_migration"))
        .order_by(ARTIFACTS.c.id)
    )
    if by_status:
        query = query.where(ARTIFACTS.c.status == bindparam("a_status"))
    if due_only:
        query = query.where(removal_due(bindparam("a_now", type_=DateTime)))
    return query


# Every step and cleanup lists artifacts: the four queries are built once.
_LISTINGS = {(s, d): _listing(s, d) for s in (False, True) for d in (False, True)}


def settle_ref(connection: Connection, migration_id: str, ref: str, status: ArtifactStatus) -> None:
    """Settle every present artifact of the migration with that reference."""
    connection.execute(
        update(ARTIFACTS)
        .where(
            ARTIFACTS.c.migration_id == migration_id,
            ARTIFACTS.c.ref == ref,
            ARTIFACTS.c.status == ArtifactStatus.PRESENT,
        )
        .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None),
    )


def settle(connection: Connection, artifact_id: int, status: ArtifactStatus) -> None:
    """Mark an artifact removed (cleaned up) or kept (it became the result)."""
    rowcount(
        connection,
        update(ARTIFACTS)
        .where(ARTIFACTS.c.id == artifact_id)
        .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None),
    )


def defer(connection: Connection, artifact_id: int, error: str, delay: float) -> None:
    """Removing the artifact failed: keep it present with the reason, retry after ``delay``."""
    rowcount(
        connection,
        update(ARTIFACTS)
        .where(ARTIFACTS.c.id == artifact_id)
        .values(
            last_error=error,
            attempts=ARTIFACTS.c.attempts + 1,
            next_attempt_at=utcnow() + timedelta(seconds=delay),
        ),
    )


def unsettled_terminal(connection: Connection) -> list[str]:
    """Finished migrations that still hold artifacts due for removal (a crash
    between steps, or a removal that failed and waits for its retry)."""
    return list(connection.scalars(_UNSETTLED_TERMINAL, {"a_now": utcnow()}))


# Asked at every daemon start and by the janitor at every sweep: built once.
_UNSETTLED_TERMINAL = (
    select(ARTIFACTS.c.migration_id)
    .join(MIGRATIONS, MIGRATIONS.c.id == ARTIFACTS.c.migration_id)
    .where(
        ARTIFACTS.c.status == ArtifactStatus.PRESENT,
        removal_due(bindparam("a_now", type_=DateTime)),
        MIGRATIONS.c.state.in_([s.value for s in TERMINAL]),
        MIGRATIONS.c.lease_owner.is_(None),
    )
    .distinct()
)
