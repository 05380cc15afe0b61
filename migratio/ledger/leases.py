"""Leases: which daemon drives a migration now.

Taking a lease is a compare-and-set on the row (``UPDATE ... WHERE`` the lease
is free), so two daemons racing for the same migration cannot both win, on
SQLite and PostgreSQL alike. A lease that is not renewed expires, and any
daemon may then take the migration over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Update,
    and_,
    bindparam,
    not_,
    or_,
    select,
    update,
)

from migratio import metrics
from migratio.ledger.models import MIGRATIONS
from migratio.ledger.rows import add_audit, rowcount, snapshot
from migratio.ledger.slots import full_sites, held_back, note_waiting, take_turns, unnoted
from migratio.ledger.types import Migration, utcnow
from migratio.machine import ACTIVE, TERMINAL

# Due migrations looked at per claim: enough that a few lost races still find one.
CLAIM_CANDIDATES = 8


def lease_free(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """Nobody holds the lease, or its holder let it expire."""
    return or_(MIGRATIONS.c.lease_owner.is_(None), MIGRATIONS.c.lease_expires_at < now)


def _claimable(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """Active, due (or asked to cancel), and nobody holds its lease."""
    return and_(
        MIGRATIONS.c.state.in_([s.value for s in ACTIVE]),
        or_(MIGRATIONS.c.next_attempt_at <= now, MIGRATIONS.c.cancel_requested.is_(True)),
        lease_free(now),
    )


# The statements of every claim and heartbeat, built once (building one costs
# more CPU than running it); their parameters are bound at each call.
_NOW = bindparam("m_now", type_=DateTime)
_CANDIDATES = (
    select(MIGRATIONS.c.id, MIGRATIONS.c.lease_owner)
    .where(_claimable(_NOW), MIGRATIONS.c.id.not_in(bindparam("m_skip", expanding=True)))
    .order_by(MIGRATIONS.c.next_attempt_at)
    .limit(CLAIM_CANDIDATES)
)
# A row update by the lease holder: bind m_id and m_owner, and the values to set.
UPDATE_IF_HELD = update(MIGRATIONS).where(
    MIGRATIONS.c.id == bindparam("m_id"), MIGRATIONS.c.lease_owner == bindparam("m_owner")
)
_TAKE_FREE = update(MIGRATIONS).where(MIGRATIONS.c.id == bindparam("m_id"), lease_free(_NOW))
_TAKE_CLAIMABLE = update(MIGRATIONS).where(MIGRATIONS.c.id == bindparam("m_id"), _claimable(_NOW))


@dataclass(frozen=True)
class Candidates:
    """What a claim may do: the due migrations it may take (id, lease owner),
    oldest due first, and whether migrations held back by ``max_concurrent``
    still wait for their note."""

    due: list[tuple[str, str | None]]
    unnoted: bool = False

    def __bool__(self) -> bool:
        return bool(self.due) or self.unnoted


def claimable(
    connection: Connection, skip: Sequence[str], slots: Mapping[str, int] | None = None
) -> Candidates:
    """The candidates of a claim: due migrations (or ones asked to cancel) whose
    lease is free, leaving out ``skip`` and queued ones to a site with no free
    slot (``slots``: site -> ``max_concurrent``)."""
    now = utcnow()
    full = full_sites(connection, slots, now) if slots else {}
    candidates = _CANDIDATES.where(not_(held_back(full))) if full else _CANDIDATES
    found = connection.execute(candidates, {"m_now": now, "m_skip": list(skip)})
    due = [(str(id_), owner) for id_, owner in found]
    return Candidates(due, bool(full) and unnoted(connection, full, _claimable(now)))


def claim(
    connection: Connection,
    owner: str,
    lease_seconds: float,
    candidates: Candidates,
    slots: Mapping[str, int] | None = None,
) -> Migration | None:
    """Take the lease of the first of ``candidates`` (from ``claimable``) still free:
    a compare-and-set each, so a candidate another daemon took meanwhile is passed.

    With ``slots``, claims take turns and count the running migrations again
    here, so daemons sharing the ledger keep ``max_concurrent`` together; the
    migrations it holds back get their note."""
    now = utcnow()
    # Still claimable: another daemon may have run it on since it was looked up.
    take = _TAKE_CLAIMABLE
    if slots:
        take_turns(connection)
        if full := full_sites(connection, slots, now):
            note_waiting(connection, full, slots, _claimable(now), now)
            take = _TAKE_CLAIMABLE.where(not_(held_back(full)))
    for migration_id, previous_owner in candidates.due:
        if not _take(connection, take, migration_id, owner, lease_seconds, now):
            continue
        migration = snapshot(connection, migration_id)
        assert migration is not None
        if previous_owner and previous_owner != owner:
            note = f"taken over from {previous_owner} after its lease expired"
            add_audit(connection, migration_id, migration.state, migration.state, now, note)
            metrics.lease_taken_over()
        return migration
    return None


def acquire(connection: Connection, migration_id: str, owner: str, lease_seconds: float) -> bool:
    """Take the lease of one migration if nobody holds it (operator commands)."""
    return _take(connection, _TAKE_FREE, migration_id, owner, lease_seconds, utcnow())


def renew(
    connection: Connection, owner: str, migration_ids: Sequence[str], lease_seconds: float
) -> set[str]:
    """Extend our leases; return the ids whose lease we no longer hold."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    lost: set[str] = set()
    for migration_id in migration_ids:
        held = {"m_id": migration_id, "m_owner": owner}
        if not rowcount(connection, UPDATE_IF_HELD, {**held, "lease_expires_at": expires}):
            lost.add(migration_id)
    # A migration that has just ended gave its lease up with its last transition
    # (its worker is still cleaning up): finished, not lost to another daemon.
    if lost:
        ended = select(MIGRATIONS.c.id).where(
            MIGRATIONS.c.id.in_(lost), MIGRATIONS.c.state.in_([s.value for s in TERMINAL])
        )
        lost -= set(connection.scalars(ended))
    return lost


def release(connection: Connection, migration_id: str, owner: str) -> None:
    held = {"m_id": migration_id, "m_owner": owner}
    rowcount(connection, UPDATE_IF_HELD, {**held, "lease_owner": None, "lease_expires_at": None})


def _take(
    connection: Connection,
    take: Update,
    migration_id: str,
    owner: str,
    lease_seconds: float,
    now: datetime,
) -> bool:
    """Compare-and-set of the lease: won only while ``take``'s condition (the
    lease is free; for a claim, still claimable) holds for the row."""
    expires = now + timedelta(seconds=lease_seconds)
    won = rowcount(
        connection,
        take,
        {"m_id": migration_id, "m_now": now, "lease_owner": owner, "lease_expires_at": expires},
    )
    return bool(won)
