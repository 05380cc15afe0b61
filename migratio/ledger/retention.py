"""Which ended migrations a ledger kept for years may let go of, and letting them go.

An ended migration (done, failed, cancelled) older than the cut-off goes, with its
audit trail, artifacts, intake jobs and block manifest, unless:

- cleanup still owes a removal (an artifact still present): its row is how the
  janitor finds what to remove;
- it is the newest done migration of its image on its route: the next version of
  the image starts from it (its block manifest), and it says what the newest copy
  at that destination was made from;
- a member of its fan-out group stays: a group goes whole, as ``status`` shows it.

The delete asks again, in its own transaction, whether each is still ended, held
by nobody, owes nothing, is not the newest, and has no group member under way:
a migration retried, or a group member queued again, after the plan stays.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from migratio.ledger import groups
from migratio.ledger.boundary import reading, transaction
from migratio.ledger.models import ARTIFACTS, MIGRATIONS, TRANSITIONS
from migratio.ledger.rows import SNAPSHOT, artifact_of, migration_of, transition_of
from migratio.ledger.types import ArtifactStatus, WholeMigration
from migratio.machine import TERMINAL, State

if TYPE_CHECKING:
    from migratio.ledger.store import Ledger

Item = TypeVar("Item")


@dataclass(frozen=True)
class Pruning:
    """What a prune would take (oldest first), and why the rest of the old stays."""

    migration_ids: list[str]
    owing_cleanup: int
    newest_of_route: int
    with_group: int


def plan(connection: Connection, before: datetime) -> Pruning:
    old = connection.execute(
        select(
            MIGRATIONS.c.id,
            MIGRATIONS.c.group_id,
            _owing().label("owing"),
            _newest().label("newest"),
        )
        .where(_ended_before(before))
        .order_by(_ended_at(), MIGRATIONS.c.id)
    ).all()
    owing = {row.id for row in old if row.owing}
    newest = {row.id for row in old if row.newest} - owing
    free = [row for row in old if row.id not in owing | newest]
    # A group stays whole while one of its members stays, whatever its age.
    staying_groups = set(
        connection.scalars(
            select(MIGRATIONS.c.group_id)
            .where(
                MIGRATIONS.c.group_id.is_not(None),
                or_(~_ended_before(before), _owing(), _newest()),
            )
            .distinct()
        )
    )
    going = [row.id for row in free if row.group_id not in staying_groups]
    return Pruning(
        migration_ids=going,
        owing_cleanup=len(owing),
        newest_of_route=len(newest),
        with_group=len(free) - len(going),
    )


def prune(
    connection: Connection, migration_ids: Sequence[str], before: datetime
) -> tuple[int, int]:
    """Delete those of ``migration_ids`` that may still go; (migrations, audit rows) deleted."""
    going = list(
        connection.scalars(
            select(MIGRATIONS.c.id).where(
                MIGRATIONS.c.id.in_(migration_ids),
                _ended_before(before),
                ~_owing(),
                ~_newest(),
                ~_group_active(),
            )
        )
    )
    if not going:
        return 0, 0
    audit = connection.scalar(
        select(func.count()).select_from(TRANSITIONS).where(TRANSITIONS.c.migration_id.in_(going))
    )
    # The other rows go with it (ON DELETE CASCADE, on SQLite too: see database.py).
    deleted = connection.execute(delete(MIGRATIONS).where(MIGRATIONS.c.id.in_(going))).rowcount
    return deleted, int(audit or 0)


def whole(connection: Connection, migration_ids: Sequence[str]) -> list[WholeMigration]:
    """Those migrations whole, in a few queries for the lot (an archive of years
    would otherwise cost a round trip per table and migration)."""
    migrations = [
        migration_of(row)
        for row in connection.execute(
            SNAPSHOT.where(MIGRATIONS.c.id.in_(migration_ids)).order_by(
                _ended_at(), MIGRATIONS.c.id
            )
        )
    ]
    history = _by_migration(connection, TRANSITIONS, migration_ids, transition_of)
    made = _by_migration(connection, ARTIFACTS, migration_ids, artifact_of)
    group_ids = {m.group_id for m in migrations if m.group_id is not None}
    grouped = {group_id: groups.members(connection, group_id) for group_id in group_ids}
    return [
        WholeMigration(
            m,
            history[m.id],
            made[m.id],
            [s for s in grouped.get(m.group_id or "", []) if s.id != m.id],
        )
        for m in migrations
    ]


def _by_migration(
    connection: Connection,
    table: Table,
    migration_ids: Sequence[str],
    of: Callable[[Row[Any]], Item],
) -> dict[str, list[Item]]:
    """The table's rows of those migrations, oldest first, by migration."""
    found: dict[str, list[Item]] = defaultdict(list)
    query = select(table).where(table.c.migration_id.in_(migration_ids)).order_by(table.c.id)
    for row in connection.execute(query):
        found[row.migration_id].append(of(row))
    return found


def _ended_at() -> ColumnElement[datetime]:
    return func.coalesce(MIGRATIONS.c.finished_at, MIGRATIONS.c.updated_at)


def _ended_before(before: datetime) -> ColumnElement[bool]:
    return and_(
        MIGRATIONS.c.state.in_([state.value for state in TERMINAL]),
        MIGRATIONS.c.lease_owner.is_(None),
        _ended_at() < before,
    )


def _owing() -> ColumnElement[bool]:
    return exists().where(
        ARTIFACTS.c.migration_id == MIGRATIONS.c.id,
        ARTIFACTS.c.status == ArtifactStatus.PRESENT.value,
    )


def _newest() -> ColumnElement[bool]:
    """Done, and no later done migration of the same image on the same route."""
    later = aliased(MIGRATIONS)
    return and_(
        MIGRATIONS.c.state == State.DONE.value,
        ~exists().where(
            later.c.image_id == MIGRATIONS.c.image_id,
            later.c.source_site == MIGRATIONS.c.source_site,
            later.c.dest_site == MIGRATIONS.c.dest_site,
            later.c.state == State.DONE.value,
            or_(
                later.c.finished_at > MIGRATIONS.c.finished_at,
                and_(later.c.finished_at == MIGRATIONS.c.finished_at, later.c.id > MIGRATIONS.c.id),
            ),
        ),
    )


def _group_active() -> ColumnElement[bool]:
    """A member of its group is not ended (queued again, or still running)."""
    member = aliased(MIGRATIONS)
    return exists().where(
        member.c.group_id == MIGRATIONS.c.group_id,
        member.c.state.not_in([state.value for state in TERMINAL]),
    )


class Retention:
    """``db prune``'s side of a ledger, beside ``Ledger`` (each method one
    transaction, as there): what may go, those migrations whole, the delete."""

    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine

    def prunable(self, before: datetime) -> Pruning:
        """Ended migrations older than ``before`` that may go."""
        with reading(self.engine) as connection:
            return plan(connection, before)

    def whole(self, migration_ids: Sequence[str]) -> list[WholeMigration]:
        """Those migrations whole (fields, history, artifacts, group), for an archive."""
        with reading(self.engine) as connection:
            return whole(connection, migration_ids)

    def prune(self, migration_ids: Sequence[str], before: datetime) -> tuple[int, int]:
        """Delete those that may still go, with their history; (migrations, audit rows)."""
        with transaction(self.engine) as connection:
            return prune(connection, migration_ids, before)
