"""Writes to a migration, each committed with its audit row.

A worker's writes are fenced by its lease: a process that lost its lease
changes nothing (``LeaseLost``). An operator command (``owner`` None) may act
only on a migration no daemon holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, Row, bindparam, insert, select, update

from migratio.errors import LeaseLost, UnknownMigration
from migratio.ledger import artifacts
from migratio.ledger.leases import UPDATE_IF_HELD, lease_free
from migratio.ledger.models import MIGRATIONS, TRANSITIONS, MigrationRow
from migratio.ledger.rows import (
    Executor,
    add_audit,
    migration_of,
    new_migration,
    rowcount,
    snapshot,
)
from migratio.ledger.types import RECORDABLE, ArtifactStatus, Change, Migration, utcnow
from migratio.machine import TERMINAL, State, next_state

# Hears of every change inside its transaction (the feedback outbox writes there).
Notify = Callable[[Executor, Change], None]


def create(
    connection: Connection,
    notify: Notify,
    source_site: str,
    dest_site: str,
    image_id: str,
    job_id: str | None,
    message: str,
    base_image_id: str | None = None,
) -> Migration:
    row = new_migration(source_site, dest_site, image_id, job_id, base_image_id)
    # Unset columns left out, as the ORM does: a JSON column given None would hold 'null'.
    values = {column.key: getattr(row, column.key) for column in MIGRATIONS.c}
    connection.execute(_INSERT, {key: value for key, value in values.items() if value is not None})
    created(connection, notify, row, message)
    return migration_of(row)


_INSERT = insert(MIGRATIONS)


def created(session: Executor, notify: Notify, row: MigrationRow, message: str) -> None:
    """The audit row and the change of a new migration (``row`` is flushed)."""
    add_audit(session, row.id, None, State.QUEUED, row.created_at, message)
    notify(session, Change(migration_of(row), None, message))


def transition(
    connection: Connection,
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
    old_state = fenced_row(connection, migration_id, owner).state
    new_state = next_state(old_state, trigger)
    values = _transition_values(new_state, now, fields)
    changed = rowcount(connection, _MOVE, {"m_id": migration_id, "m_state": old_state, **values})
    if not changed:
        raise LeaseLost(f"migration {migration_id} changed under us")
    add_audit(connection, migration_id, old_state, new_state, now, message)
    for ref in keep:
        artifacts.settle_ref(connection, migration_id, ref, ArtifactStatus.KEPT)
    moved = snapshot(connection, migration_id)
    assert moved is not None
    notify(connection, Change(moved, old_state, message))
    return moved


def record(connection: Connection, migration_id: str, owner: str, fields: dict[str, Any]) -> None:
    """Progress and results of the running step, no state change."""
    check_fields(fields)
    held = {"m_id": migration_id, "m_owner": owner}
    changed = rowcount(connection, UPDATE_IF_HELD, {**held, "updated_at": utcnow(), **fields})
    if not changed:
        raise LeaseLost(f"lease on migration {migration_id} lost")


def schedule_retry(
    connection: Connection, migration_id: str, owner: str, attempt: int, delay: float, error: str
) -> None:
    """Record a transient failure and hand the migration back until its next attempt."""
    now = utcnow()
    state = fenced_row(connection, migration_id, owner).state
    _hand_back(
        connection, migration_id, now + timedelta(seconds=delay), attempt=attempt, last_error=error
    )
    message = f"attempt {attempt} failed, retrying in {delay:.1f}s: {error}"
    add_audit(connection, migration_id, state, state, now, message)


def wait(connection: Connection, migration_id: str, owner: str, delay: float, note: str) -> bool:
    """Hand the migration back until ``delay`` has passed, costing no attempt.

    ``note`` ("<why>: <details>") is written unless the latest audit row is
    already a note of the same why in this state: a migration that waits a long
    time leaves one line in its history, not one per look. True if written.
    """
    now = utcnow()
    state = fenced_row(connection, migration_id, owner).state
    _hand_back(connection, migration_id, now + timedelta(seconds=delay))
    latest = connection.execute(
        select(TRANSITIONS.c.from_state, TRANSITIONS.c.to_state, TRANSITIONS.c.message)
        .where(TRANSITIONS.c.migration_id == migration_id)
        .order_by(TRANSITIONS.c.id.desc())
        .limit(1)
    ).first()
    why = note.split(":", 1)[0]
    if (
        latest is not None
        and latest.from_state == latest.to_state == state
        and latest.message.split(":", 1)[0] == why
    ):
        return False
    add_audit(connection, migration_id, state, state, now, note)
    return True


def _hand_back(connection: Connection, migration_id: str, due: datetime, **fields: Any) -> None:
    """Give the lease up until ``due`` (the caller's ``fenced_row`` checked it is ours)."""
    rowcount(
        connection,
        update(MIGRATIONS)
        .where(MIGRATIONS.c.id == migration_id)
        .values(
            next_attempt_at=due,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=utcnow(),
            **fields,
        ),
    )


def note(connection: Connection, migration_id: str, owner: str, message: str) -> None:
    """An audit note by the lease holder (from = to = the current state)."""
    state = fenced_row(connection, migration_id, owner).state
    add_audit(connection, migration_id, state, state, utcnow(), message)


def request_cancel(connection: Connection, migration_id: str) -> Migration:
    """Flag the migration; its daemon stops at the next checkpoint."""
    rowcount(
        connection,
        update(MIGRATIONS)
        .where(
            MIGRATIONS.c.id == migration_id,
            MIGRATIONS.c.state.not_in([state.value for state in TERMINAL]),
        )
        .values(cancel_requested=True, updated_at=utcnow()),
    )
    migration = snapshot(connection, migration_id)
    if migration is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    return migration


def check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - RECORDABLE
    if unknown:
        raise ValueError(f"not recordable: {sorted(unknown)}")


def fenced_row(connection: Executor, migration_id: str, owner: str | None) -> Row[Any]:
    """The migration's state, destination and lease holder, once we know that we may write:
    ``owner`` holds its lease (or, with ``owner`` None, nobody does)."""
    found = connection.execute(_FENCE, {"m_id": migration_id, "m_now": utcnow()}).one_or_none()
    if found is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    if owner is not None and found.lease_owner != owner:
        raise LeaseLost(f"lease on migration {migration_id} lost to {found.lease_owner}")
    if owner is None and not found.free:
        raise LeaseLost(f"migration {migration_id} is held by {found.lease_owner}")
    return found


_MOVE = update(MIGRATIONS).where(
    MIGRATIONS.c.id == bindparam("m_id"), MIGRATIONS.c.state == bindparam("m_state")
)
_FENCE = select(
    MIGRATIONS.c.state,
    MIGRATIONS.c.dest_site,
    MIGRATIONS.c.lease_owner,
    lease_free(bindparam("m_now", type_=DateTime)).label("free"),
).where(MIGRATIONS.c.id == bindparam("m_id"))


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
