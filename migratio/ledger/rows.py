"""Between tables and snapshots: new rows, audit rows, and the snapshots callers get."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, Executable, Row, bindparam, insert, select
from sqlalchemy.orm import Session

from migratio.ledger.models import MIGRATIONS, TRANSITIONS, ArtifactRow, MigrationRow, TransitionRow
from migratio.ledger.types import Artifact, ArtifactStatus, Migration, Transition, utcnow
from migratio.machine import State

# Where a function runs in either kind of ledger transaction: Core (most) or
# ORM (the writes that build new rows as objects, see ``boundary``).
Executor = Session | Connection

# Written into every audit row, so operators see which daemon did what.
HOST = socket.gethostname()


def migration_of(row: MigrationRow | Row[Any]) -> Migration:
    return Migration(**{name: getattr(row, name) for name in Migration.__dataclass_fields__})


# A migration's snapshot columns, read in Core (see models.MIGRATIONS).
SNAPSHOT = select(*(MIGRATIONS.c[name] for name in Migration.__dataclass_fields__))


_SNAPSHOT_OF = SNAPSHOT.where(MIGRATIONS.c.id == bindparam("m_id"))


def snapshot(connection: Connection, migration_id: str) -> Migration | None:
    """The migration as it is in this transaction, or None."""
    row = connection.execute(_SNAPSHOT_OF, {"m_id": migration_id}).one_or_none()
    return None if row is None else migration_of(row)


def artifact_of(row: ArtifactRow | Row[Any]) -> Artifact:
    return Artifact(
        row.id,
        row.migration_id,
        row.kind,
        row.site,
        row.ref,
        ArtifactStatus(row.status),
        row.last_error,
        row.attempts or 0,
    )


def transition_of(row: TransitionRow | Row[Any]) -> Transition:
    return Transition(
        row.migration_id, row.from_state, row.to_state, row.at, row.host, row.pid, row.message
    )


def new_migration(
    source_site: str,
    dest_site: str,
    image_id: str,
    job_id: str | None,
    base_image_id: str | None = None,
    group_id: str | None = None,
) -> MigrationRow:
    now = utcnow()
    return MigrationRow(
        id=str(uuid.uuid4()),
        source_site=source_site,
        dest_site=dest_site,
        image_id=image_id,
        state=State.QUEUED.value,
        attempt=0,
        next_attempt_at=now,
        cancel_requested=False,
        bytes_done=0,
        job_id=job_id,
        base_image_id=base_image_id,
        group_id=group_id,
        created_at=now,
        updated_at=now,
    )


def add_audit(
    session: Executor,
    migration_id: str,
    from_state: str | None,
    to_state: str,
    at: datetime,
    message: str,
) -> None:
    """Write an audit row by this process now; ``from_state == to_state`` makes it
    a note. Its migration row must be in the database already (flushed)."""
    row = {
        "migration_id": migration_id,
        "from_state": None if from_state is None else str(from_state),
        "to_state": str(to_state),
        "at": at,
        "host": HOST,
        "pid": os.getpid(),
        "message": message,
    }
    session.execute(_ADD_AUDIT, row)


_ADD_AUDIT = insert(TRANSITIONS)


def rowcount(
    connection: Connection, statement: Executable, parameters: dict[str, Any] | None = None
) -> int:
    """How many rows ``statement`` changed: a compare-and-set won or lost."""
    result = connection.execute(statement, parameters)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
