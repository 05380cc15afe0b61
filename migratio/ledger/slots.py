"""Per-site concurrency: at most ``max_concurrent`` migrations running to a destination.

A migration holds a slot of its destination from the claim that starts it (a
queued migration whose lease is held) until it ends: every state after
``queued`` counts, waiting for a retry or for work-dir space included, so a
slot is never handed to another migration while its holder still has work to
do. The count and the claim are one transaction, and claims take turns while
any site has a limit (PostgreSQL: an advisory lock; SQLite: its write lock),
so daemons sharing a ledger keep the limit together: the second claim counts
the lease the first committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, func, not_, or_, select

from migratio.ledger.models import MIGRATIONS, TRANSITIONS
from migratio.ledger.rows import add_audit
from migratio.machine import ACTIVE, State

# Any constant shared by every migratio process: the claims' advisory lock.
CLAIM_LOCK_KEY = 0x6D696763  # "migc"

# The audit note of a queued migration held back (written once per wait).
WAITING_NOTE = "waiting for a free slot"

# Held-back migrations given their note per claim: the rest get theirs at the next.
NOTES_PER_CLAIM = 50


def take_turns(connection: Connection) -> None:
    """Serialise claims (PostgreSQL); SQLite's BEGIN IMMEDIATE does it already."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))


def full_sites(connection: Connection, slots: Mapping[str, int], now: datetime) -> dict[str, int]:
    """The limited destinations with no free slot, and how many run to each."""
    holding = or_(
        MIGRATIONS.c.state != State.QUEUED.value,
        and_(MIGRATIONS.c.lease_owner.is_not(None), MIGRATIONS.c.lease_expires_at >= now),
    )
    counts = select(MIGRATIONS.c.dest_site, func.count()).where(
        MIGRATIONS.c.dest_site.in_(list(slots)),
        MIGRATIONS.c.state.in_([s.value for s in ACTIVE]),
        holding,
    )
    running = {
        site: count for site, count in connection.execute(counts.group_by(MIGRATIONS.c.dest_site))
    }
    return {site: running[site] for site in running if running[site] >= slots[site]}


def held_back(full: Mapping[str, int]) -> ColumnElement[bool]:
    """Queued migrations to a full site (a cancel request still goes through)."""
    return and_(
        MIGRATIONS.c.state == State.QUEUED.value,
        MIGRATIONS.c.dest_site.in_(list(full)),
        MIGRATIONS.c.cancel_requested.is_(False),
    )


def _unnoted(
    connection: Connection, full: Mapping[str, int], due: ColumnElement[bool], limit: int
) -> list[tuple[str, str]]:
    """(id, destination) of due migrations held back whose latest audit row is
    not this note yet, oldest due first."""
    latest = (
        select(TRANSITIONS.c.message)
        .where(TRANSITIONS.c.migration_id == MIGRATIONS.c.id)
        .order_by(TRANSITIONS.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(MIGRATIONS.c.id, MIGRATIONS.c.dest_site)
        .where(due, held_back(full), not_(func.coalesce(latest, "").startswith(WAITING_NOTE)))
        .order_by(MIGRATIONS.c.next_attempt_at)
        .limit(limit)
    )
    return [(str(migration_id), str(site)) for migration_id, site in connection.execute(query)]


def unnoted(connection: Connection, full: Mapping[str, int], due: ColumnElement[bool]) -> bool:
    """Whether a held-back migration still waits for its note (a read)."""
    return bool(_unnoted(connection, full, due, 1))


def note_waiting(
    connection: Connection,
    full: Mapping[str, int],
    slots: Mapping[str, int],
    due: ColumnElement[bool],
    now: datetime,
) -> None:
    """Say why each due migration held back waits, once per wait: not when its
    latest audit row already is this note."""
    for migration_id, site in _unnoted(connection, full, due, NOTES_PER_CLAIM):
        note = (
            f"{WAITING_NOTE}: {full[site]} of max_concurrent {slots[site]} "
            f"migrations to {site} running"
        )
        add_audit(connection, migration_id, State.QUEUED, State.QUEUED, now, note)
