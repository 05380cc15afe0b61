"""Writes to a migration, each committed with its audit row.

A worker's writes are fenced by its lease: a process that lost its lease
changes nothing (``LeaseLost``). An operator command (``owner`` None) may act
only on a migration no daemon holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from migratio.errors import LeaseLost, UnknownMigration
from migratio.ledger import artifacts
from migratio.ledger.leases import lease_free
from migratio.ledger.models import MigrationRow, TransitionRow
from migratio.ledger.rows import audit, migration_of, new_migration, rowcount
from migratio.ledger.types import RECORDABLE, ArtifactStatus, Change, Migration, utcnow
from migratio.machine import TERMINAL, State, next_state

# Hears of every change inside its transaction (the feedback outbox writes there).
Notify = Callable[[Session, Change], None]


def create(
    session: Session,
    notify: Notify,
    source_site: str,
    dest_site: str,
    image_id: str,
    job_id: str | None,
    message: str,
    base_image_id: str | None = None,
) -> Migration:
    row = new_migration(source_site, dest_site, image_id, job_id, base_image_id)
    session.add(row)
    session.flush()
    created(session, notify, row, message)
    return migration_of(row)


def created(session: Session, notify: Notify, row: MigrationRow, message: str) -> None:
    """The audit row and the change of a new migration."""
    session.add(audit(row.id, None, State.QUEUED, row.created_at, message))
    notify(session, Change(migration_of(row), None, message))


def transition(
    session: Session,
    notify: Notify,
    migration_id: str,
    owner: str | None,
    trigger: str,
    message: str,
    fields: dict[str, Any],
    keep: Sequence[str] = (),
) -> Migration:
    """Apply ``trigger`` (the state machine says where to) and write its audit row;
    the artifacts in ``keep`` became the result, settled in the same transaction
    (a crash can then never leave them kept by a migration that did not finish)."""
    check_fields(fields)
    now = utcnow()
    row = fenced_row(session, migration_id, owner)
    old_state = row.state
    new_state = next_state(old_state, trigger)
    changed = rowcount(
        session,
        update(MigrationRow)
        .where(MigrationRow.id == migration_id, MigrationRow.state == old_state)
        .values(**_transition_values(new_state, now, fields)),
    )
    if not changed:
        raise LeaseLost(f"migration {migration_id} changed under us")
    session.add(audit(migration_id, old_state, new_state, now, message))
    for ref in keep:
        artifacts.settle_ref(session, migration_id, ref, ArtifactStatus.KEPT)
    session.flush()
    session.refresh(row)
    moved = migration_of(row)
    notify(session, Change(moved, old_state, message))
    return moved


def record(session: Session, migration_id: str, owner: str, fields: dict[str, Any]) -> None:
    """Progress and results of the running step, no state change."""
    check_fields(fields)
    changed = rowcount(
        session,
        update(MigrationRow)
        .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
        .values(updated_at=utcnow(), **fields),
    )
    if not changed:
        raise LeaseLost(f"lease on migration {migration_id} lost")


def schedule_retry(
    session: Session, migration_id: str, owner: str, attempt: int, delay: float, error: str
) -> None:
    """Record a transient failure and hand the migration back until its next attempt."""
    now = utcnow()
    row = fenced_row(session, migration_id, owner)
    row.attempt = attempt
    row.last_error = error
    row.next_attempt_at = now + timedelta(seconds=delay)
    row.lease_owner = None
    row.lease_expires_at = None
    row.updated_at = now
    message = f"attempt {attempt} failed, retrying in {delay:.1f}s: {error}"
    session.add(audit(migration_id, row.state, row.state, now, message))


def wait(session: Session, migration_id: str, owner: str, delay: float, note: str) -> bool:
    """Hand the migration back until ``delay`` has passed, costing no attempt.

    ``note`` ("<why>: <details>") is written unless the latest audit row is
    already a note of the same why in this state: a migration that waits a long
    time leaves one line in its history, not one per look. True if written.
    """
    now = utcnow()
    row = fenced_row(session, migration_id, owner)
    row.next_attempt_at = now + timedelta(seconds=delay)
    row.lease_owner = None
    row.lease_expires_at = None
    row.updated_at = now
    latest = session.scalars(
        select(TransitionRow)
        .where(TransitionRow.migration_id == migration_id)
        .order_by(TransitionRow.id.desc())
        .limit(1)
    ).first()
    why = note.split(":", 1)[0]
    if (
        latest is not None
        and latest.from_state == latest.to_state == row.state
        and latest.message.split(":", 1)[0] == why
    ):
        return False
    session.add(audit(migration_id, row.state, row.state, now, note))
    return True


def note(session: Session, migration_id: str, owner: str, message: str) -> None:
    """An audit note by the lease holder (from = to = the current state)."""
    row = fenced_row(session, migration_id, owner)
    session.add(audit(migration_id, row.state, row.state, utcnow(), message))


def request_cancel(session: Session, migration_id: str) -> Migration:
    """Flag the migration; its daemon stops at the next checkpoint."""
    row = session.get(MigrationRow, migration_id)
    if row is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    if row.state not in TERMINAL:
        row.cancel_requested = True
        row.updated_at = utcnow()
    return migration_of(row)


def purge(session: Session, migration_id: str) -> None:
    session.execute(delete(MigrationRow).where(MigrationRow.id == migration_id))


def check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - RECORDABLE
    if unknown:
        raise ValueError(f"not recordable: {sorted(unknown)}")


def fenced_row(session: Session, migration_id: str, owner: str | None) -> MigrationRow:
    found = session.execute(
        select(MigrationRow, lease_free(utcnow())).where(MigrationRow.id == migration_id)
    ).one_or_none()
    if found is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    row, free = found
    if owner is not None and row.lease_owner != owner:
        raise LeaseLost(f"lease on migration {migration_id} lost to {row.lease_owner}")
    if owner is None and not free:
        raise LeaseLost(f"migration {migration_id} is held by {row.lease_owner}")
    return row


def _transition_values(new_state: State, now: datetime, fields: dict[str, Any]) -> dict[str, Any]:
    # A step that succeeded ends the error streak: last_error is what is wrong now.
    values: dict[str, Any] = {
        "state": new_state.value,
        "updated_at": now,
        "attempt": 0,
        "last_error": None,
        **fields,
    }
    if new_state in TERMINAL:
        values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
    if new_state is State.QUEUED:
        values.update(
            next_attempt_at=now,
            finished_at=None,
            cancel_requested=False,
            last_error=None,
            bytes_done=0,
        )
    return values
