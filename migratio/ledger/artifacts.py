"""Artifacts: what a migration created (temporary files, destination records) and
whether each was kept as the result or removed.

An artifact is written down before it exists, so a crash never leaves one
nobody knows of; cleanup removes every artifact still present unless it is
kept, and a removal that failed waits for its retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from migratio.ledger.models import ArtifactRow, MigrationRow
from migratio.ledger.rows import UNSYNCHRONIZED, artifact_of, rowcount
from migratio.ledger.types import Artifact, ArtifactStatus, utcnow
from migratio.machine import TERMINAL


def removal_due(now: datetime) -> ColumnElement[bool]:
    """Removing the artifact was never tried, or its retry time has come."""
    return or_(ArtifactRow.next_attempt_at.is_(None), ArtifactRow.next_attempt_at <= now)


def add(session: Session, migration_id: str, kind: str, ref: str, site: str | None) -> None:
    """Write the artifact down once, however often a resumed step announces it."""
    exists = session.scalar(
        select(ArtifactRow.id).where(
            ArtifactRow.migration_id == migration_id,
            ArtifactRow.kind == kind,
            ArtifactRow.ref == ref,
            ArtifactRow.status == ArtifactStatus.PRESENT,
        )
    )
    if exists is None:
        session.add(
            ArtifactRow(
                migration_id=migration_id,
                kind=kind,
                site=site,
                ref=ref,
                status=ArtifactStatus.PRESENT,
                created_at=utcnow(),
                attempts=0,
            )
        )


def listing(
    session: Session, migration_id: str, status: ArtifactStatus | None, due_only: bool
) -> list[Artifact]:
    """The migration's artifacts, oldest first; ``due_only``: those whose
    removal is not waiting for a retry."""
    query = (
        select(ArtifactRow).where(ArtifactRow.migration_id == migration_id).order_by(ArtifactRow.id)
    )
    if status is not None:
        query = query.where(ArtifactRow.status == status)
    if due_only:
        query = query.where(removal_due(utcnow()))
    return [artifact_of(row) for row in session.scalars(query)]


def settle_ref(session: Session, migration_id: str, ref: str, status: ArtifactStatus) -> None:
    """Settle every present artifact of the migration with that reference."""
    session.execute(
        update(ArtifactRow)
        .where(
            ArtifactRow.migration_id == migration_id,
            ArtifactRow.ref == ref,
            ArtifactRow.status == ArtifactStatus.PRESENT,
        )
        .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None),
        execution_options=UNSYNCHRONIZED,
    )


def settle(session: Session, artifact_id: int, status: ArtifactStatus) -> None:
    """Mark an artifact removed (cleaned up) or kept (it became the result)."""
    rowcount(
        session,
        update(ArtifactRow)
        .where(ArtifactRow.id == artifact_id)
        .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None),
    )


def defer(session: Session, artifact_id: int, error: str, delay: float) -> None:
    """Removing the artifact failed: keep it present with the reason, retry after ``delay``."""
    rowcount(
        session,
        update(ArtifactRow)
        .where(ArtifactRow.id == artifact_id)
        .values(
            last_error=error,
            attempts=ArtifactRow.attempts + 1,
            next_attempt_at=utcnow() + timedelta(seconds=delay),
        ),
    )


def unsettled_terminal(session: Session) -> list[str]:
    """Finished migrations that still hold artifacts due for removal (a crash
    between steps, or a removal that failed and waits for its retry)."""
    query = (
        select(ArtifactRow.migration_id)
        .join(MigrationRow, MigrationRow.id == ArtifactRow.migration_id)
        .where(
            ArtifactRow.status == ArtifactStatus.PRESENT,
            removal_due(utcnow()),
            MigrationRow.state.in_([s.value for s in TERMINAL]),
            MigrationRow.lease_owner.is_(None),
        )
        .distinct()
    )
    return list(session.scalars(query))
