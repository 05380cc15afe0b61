"""What operators are shown about migrations, JSON-ready: the ``status`` rows and
the ``show`` details. The CLI prints these; tests and tools read the same dicts.

A migration's *activity* says what is happening to it now, in an operator's
words: ``running`` (a daemon holds its lease), ``waiting to retry`` (a transient
error, next attempt at ...), ``waiting`` (for something it needs, e.g. work-dir
space: its history's last note says what; looked at again at ...), ``paused``
(released by a daemon that stopped, due again at once), ``waiting for a slot``
(queued, its destination's ``max_concurrent`` reached), ``queued``, or ended.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from migratio.ledger.types import Migration, Transition, WholeMigration, utcnow
from migratio.machine import State, is_terminal

if TYPE_CHECKING:
    from migratio.ledger.store import Ledger

# Errors in the status table are cut to this many characters (``show`` has them whole).
SHORT_ERROR = 60


def activity(migration: Migration, now: datetime | None = None, full: Collection[str] = ()) -> str:
    """``full``: the destinations whose ``max_concurrent`` is reached now (a
    queued migration to one waits for a slot)."""
    now = now or utcnow()
    if is_terminal(migration.state):
        return "ended"
    if migration.lease_owner and migration.lease_expires_at and migration.lease_expires_at > now:
        return "running"
    if (
        migration.state == State.QUEUED
        and migration.dest_site in full
        and not migration.cancel_requested
    ):
        return "waiting for a slot"
    if migration.attempt and migration.next_attempt_at > now:
        return "waiting to retry"
    if migration.next_attempt_at > now:
        return "waiting"
    if migration.state == State.QUEUED:
        return "queued"
    return "paused"


def summary(
    migration: Migration, now: datetime | None = None, full: Collection[str] = ()
) -> dict[str, Any]:
    """One status-table row (``full``: as ``activity`` takes it)."""
    now = now or utcnow()
    doing = activity(migration, now, full)
    retry_in = (migration.next_attempt_at - now).total_seconds()
    return {
        "id": migration.id,
        "image": migration.image_id,
        "name": (migration.source_image or {}).get("name"),
        "source_site": migration.source_site,
        "dest_site": migration.dest_site,
        "state": migration.state,
        "activity": doing,
        "retry_in_seconds": round(retry_in, 1) if doing == "waiting to retry" else None,
        "held_by": migration.lease_owner if doing == "running" else None,
        "progress": progress(migration),
        "bytes_done": migration.bytes_done,
        "bytes_total": migration.bytes_total,
        "age_seconds": round((now - migration.created_at).total_seconds(), 1),
        "dest_image_id": migration.dest_image_id,
        "error": migration.last_error,
        "job_id": migration.job_id,
        "group": migration.group_id,
    }


def describe(ledger: Ledger, migration: Migration) -> dict[str, Any]:
    """Every field, the time spent in each state, the full history and the artifacts."""
    siblings = ledger.group_members(migration.group_id) if migration.group_id else []
    return whole(
        WholeMigration(
            migration,
            ledger.history(migration.id),
            ledger.artifacts(migration.id, status=None),
            [m for m in siblings if m.id != migration.id],
        )
    )


def whole(found: WholeMigration) -> dict[str, Any]:
    """``describe``'s answer from a migration read whole already (an archive reads
    many at once)."""
    migration, history = found.migration, found.history
    fields = {name: _jsonable(value) for name, value in asdict(migration).items()}
    rows = [
        {
            "from": row.from_state,
            "to": row.to_state,
            "at": _jsonable(row.at),
            "message": row.message,
            "host": row.host,
            "pid": row.pid,
        }
        for row in history
    ]
    artifacts = [
        {
            "kind": a.kind,
            "site": a.site,
            "ref": a.ref,
            "status": a.status,
            "last_error": a.last_error,
            "attempts": a.attempts,
        }
        for a in found.artifacts
    ]
    siblings = [{"id": m.id, "dest_site": m.dest_site, "state": m.state} for m in found.siblings]
    return {
        **fields,
        "siblings": siblings,
        "activity": activity(migration),
        "error": migration.last_error,
        "durations": durations(history, migration),
        "history": rows,
        "artifacts": artifacts,
    }


def durations(history: list[Transition], migration: Migration) -> dict[str, float]:
    """Seconds spent in each state, summed over visits (a retried migration
    enters some states again); the current state counts up to now."""
    spent: dict[str, float] = {}
    changes = [row for row in history if row.from_state != row.to_state]
    for row, following in zip(changes, [*changes[1:], None], strict=True):
        if is_terminal(row.to_state):
            continue
        until = following.at if following is not None else utcnow()
        seconds = (until - row.at).total_seconds()
        spent[row.to_state] = round(spent.get(row.to_state, 0.0) + seconds, 3)
    return spent


def progress(migration: Migration) -> float | None:
    if migration.state == State.DONE:
        return 1.0
    if not migration.bytes_total:
        return None
    return min(1.0, migration.bytes_done / migration.bytes_total)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    return value
