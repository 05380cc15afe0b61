"""Between tables and snapshots: new rows, audit rows, and the snapshots callers get."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime

from sqlalchemy import CursorResult, Executable
from sqlalchemy.orm import Session

from migratio.ledger.models import ArtifactRow, MigrationRow, TransitionRow
from migratio.ledger.types import Artifact, ArtifactStatus, Migration, Transition, utcnow
from migratio.machine import State

# Written into every audit row, so operators see which daemon did what.
HOST = socket.gethostname()


def migration_of(row: MigrationRow) -> Migration:
    return Migration(**{name: getattr(row, name) for name in Migration.__dataclass_fields__})


def artifact_of(row: ArtifactRow) -> Artifact:
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


def transition_of(row: TransitionRow) -> Transition:
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


def audit(
    migration_id: str, from_state: str | None, to_state: str, at: datetime, message: str
) -> TransitionRow:
    """An audit row by this process; ``from_state == to_state`` makes it a note."""
    return TransitionRow(
        migration_id=migration_id,
        from_state=from_state,
        to_state=str(to_state),
        at=at,
        host=HOST,
        pid=os.getpid(),
        message=message,
    )


# Bulk UPDATE/DELETE without matching the rows already loaded in the session
# (SQLAlchemy's default evaluates the WHERE in Python: a tenth of a claim's CPU).
# A caller that reads a changed row again in the same transaction refreshes it.
UNSYNCHRONIZED = {"synchronize_session": False}


def rowcount(session: Session, statement: Executable) -> int:
    """How many rows ``statement`` changed: a compare-and-set won or lost."""
    result = session.execute(statement, execution_options=UNSYNCHRONIZED)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
