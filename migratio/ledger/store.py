"""Ledger operations. Every state change commits with its audit row, and every write
by a worker is fenced by its lease, so a process that lost its lease changes nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Engine, Executable, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from migratio.errors import LeaseLost, UnknownMigration
from migratio.ledger.models import ArtifactRow, MigrationRow, TransitionRow
from migratio.machine import ACTIVE, TERMINAL, State, next_state

HOST = socket.gethostname()


def utcnow() -> datetime:
    """Naive UTC, the ledger's only time representation."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Migration:
    """A read-only snapshot of a ledger row."""

    id: str
    source_site: str
    dest_site: str
    image_id: str
    state: str
    attempt: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    bytes_done: int
    bytes_total: int | None
    source_md5: str | None
    source_sha512: str | None
    payload_sha512: str | None
    dest_sha512: str | None
    dest_image_id: str | None
    source_image: dict[str, Any] | None
    transfer_state: dict[str, Any] | None
    last_error: str | None
    job_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: MigrationRow) -> Migration:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Transition:
    migration_id: str
    from_state: str | None
    to_state: str
    at: datetime
    host: str
    pid: int
    message: str


@dataclass(frozen=True)
class Artifact:
    id: int
    migration_id: str
    kind: str
    site: str | None
    ref: str
    status: str


# Fields a worker may record on its migration; anything else goes through transitions.
RECORDABLE = frozenset(
    {
        "bytes_done",
        "bytes_total",
        "source_md5",
        "source_sha512",
        "payload_sha512",
        "dest_sha512",
        "dest_image_id",
        "source_image",
        "transfer_state",
        "last_error",
    }
)


class Ledger:
    """The persistent truth about every migration."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # ---- creation and reading -------------------------------------------------

    def create(
        self,
        source_site: str,
        dest_site: str,
        image_id: str,
        *,
        job_id: str | None = None,
        message: str = "submitted",
    ) -> Migration:
        now = utcnow()
        row = MigrationRow(
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
            created_at=now,
            updated_at=now,
        )
        with self._tx() as session:
            session.add(row)
            session.flush()
            session.add(_audit(row.id, None, State.QUEUED, now, message))
        return Migration.of(row)

    def get(self, migration_id: str) -> Migration:
        with self._tx() as session:
            row = session.get(MigrationRow, migration_id)
            if row is None:
                raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
            return Migration.of(row)

    def find(self, prefix: str) -> Migration:
        """A migration by full id or unique id prefix (operators type short ids)."""
        with self._tx() as session:
            rows = session.scalars(
                select(MigrationRow).where(MigrationRow.id.startswith(prefix)).limit(2)
            ).all()
        if len(rows) != 1:
            problem = "no" if not rows else "more than one"
            raise UnknownMigration(f"{problem} migration matches {prefix!r}")
        return Migration.of(rows[0])

    def migrations(self, states: Sequence[str] | None = None, limit: int = 1000) -> list[Migration]:
        query = select(MigrationRow).order_by(MigrationRow.created_at.desc()).limit(limit)
        if states:
            query = query.where(MigrationRow.state.in_(list(states)))
        with self._tx() as session:
            return [Migration.of(row) for row in session.scalars(query)]

    def history(self, migration_id: str) -> list[Transition]:
        query = (
            select(TransitionRow)
            .where(TransitionRow.migration_id == migration_id)
            .order_by(TransitionRow.id)
        )
        with self._tx() as session:
            return [
                Transition(
                    row.migration_id,
                    row.from_state,
                    row.to_state,
                    row.at,
                    row.host,
                    row.pid,
                    row.message,
                )
                for row in session.scalars(query)
            ]

    def count_active(self) -> int:
        query = select(func.count()).where(MigrationRow.state.in_([s.value for s in ACTIVE]))
        with self._tx() as session:
            return int(session.scalar(query) or 0)

    # ---- leases ---------------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float, skip: Sequence[str] = ()) -> Migration | None:
        """Take the lease of one due migration, or None. Compare-and-set, so two
        daemons racing for the same row cannot both win (SQLite and PostgreSQL alike)."""
        now = utcnow()
        free = or_(MigrationRow.lease_owner.is_(None), MigrationRow.lease_expires_at < now)
        due = and_(
            MigrationRow.state.in_([s.value for s in ACTIVE]),
            or_(MigrationRow.next_attempt_at <= now, MigrationRow.cancel_requested.is_(True)),
            free,
        )
        candidates = select(MigrationRow.id, MigrationRow.lease_owner).where(due)
        if skip:
            candidates = candidates.where(MigrationRow.id.not_in(list(skip)))
        candidates = candidates.order_by(MigrationRow.next_attempt_at).limit(8)
        with self._tx() as session:
            for migration_id, previous_owner in session.execute(candidates).all():
                won = _rowcount(
                    session,
                    update(MigrationRow)
                    .where(MigrationRow.id == migration_id, free)
                    .values(
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                    ),
                )
                if won:
                    row = session.get(MigrationRow, migration_id)
                    assert row is not None
                    if previous_owner and previous_owner != owner:
                        session.add(
                            _audit(
                                row.id,
                                row.state,
                                row.state,
                                now,
                                f"taken over from {previous_owner} after its lease expired",
                            )
                        )
                    return Migration.of(row)
        return None

    def acquire(self, migration_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease of one migration if nobody holds it (operator commands)."""
        now = utcnow()
        with self._tx() as session:
            return bool(
                _rowcount(
                    session,
                    update(MigrationRow)
                    .where(
                        MigrationRow.id == migration_id,
                        or_(
                            MigrationRow.lease_owner.is_(None),
                            MigrationRow.lease_expires_at < now,
                        ),
                    )
                    .values(
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                    ),
                )
            )

    def renew(self, owner: str, migration_ids: Sequence[str], lease_seconds: float) -> set[str]:
        """Extend our leases; return the ids whose lease we no longer hold."""
        lost: set[str] = set()
        expires = utcnow() + timedelta(seconds=lease_seconds)
        with self._tx() as session:
            for migration_id in migration_ids:
                renewed = _rowcount(
                    session,
                    update(MigrationRow)
                    .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
                    .values(lease_expires_at=expires),
                )
                if not renewed:
                    lost.add(migration_id)
        return lost

    def release(self, migration_id: str, owner: str) -> None:
        with self._tx() as session:
            _rowcount(
                session,
                update(MigrationRow)
                .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None),
            )

    # ---- fenced writes by the lease holder ------------------------------------

    def transition(
        self,
        migration_id: str,
        owner: str | None,
        trigger: str,
        message: str,
        **fields: Any,
    ) -> Migration:
        """Apply ``trigger`` and write its audit row in one transaction.

        ``owner`` None means an operator command acting on an unleased migration.
        """
        _check_fields(fields)
        now = utcnow()
        with self._tx() as session:
            row = _fenced_row(session, migration_id, owner)
            old_state = row.state
            new_state = next_state(old_state, trigger)
            changed = _rowcount(
                session,
                update(MigrationRow)
                .where(MigrationRow.id == migration_id, MigrationRow.state == old_state)
                .values(**_transition_values(new_state, now, fields)),
            )
            if not changed:
                raise LeaseLost(f"migration {migration_id} changed under us")
            session.add(_audit(migration_id, old_state, new_state, now, message))
            session.flush()
            session.refresh(row)
            return Migration.of(row)

    def record(self, migration_id: str, owner: str, **fields: Any) -> None:
        _check_fields(fields)
        with self._tx() as session:
            changed = _rowcount(
                session,
                update(MigrationRow)
                .where(MigrationRow.id == migration_id, MigrationRow.lease_owner == owner)
                .values(updated_at=utcnow(), **fields),
            )
        if not changed:
            raise LeaseLost(f"lease on migration {migration_id} lost")

    def schedule_retry(
        self, migration_id: str, owner: str, attempt: int, delay: float, error: str
    ) -> None:
        """Record a transient failure and hand the migration back until its next attempt."""
        now = utcnow()
        with self._tx() as session:
            row = _fenced_row(session, migration_id, owner)
            row.attempt = attempt
            row.last_error = error
            row.next_attempt_at = now + timedelta(seconds=delay)
            row.lease_owner = None
            row.lease_expires_at = None
            row.updated_at = now
            session.add(
                _audit(
                    migration_id,
                    row.state,
                    row.state,
                    now,
                    f"attempt {attempt} failed, retrying in {delay:.1f}s: {error}",
                )
            )

    def request_cancel(self, migration_id: str) -> Migration:
        with self._tx() as session:
            row = session.get(MigrationRow, migration_id)
            if row is None:
                raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
            if row.state not in TERMINAL:
                row.cancel_requested = True
                row.updated_at = utcnow()
            return Migration.of(row)

    # ---- artifacts ------------------------------------------------------------

    def add_artifact(self, migration_id: str, kind: str, ref: str, site: str | None = None) -> None:
        with self._tx() as session:
            exists = session.scalar(
                select(ArtifactRow.id).where(
                    ArtifactRow.migration_id == migration_id,
                    ArtifactRow.kind == kind,
                    ArtifactRow.ref == ref,
                    ArtifactRow.status == "present",
                )
            )
            if exists is None:
                session.add(
                    ArtifactRow(
                        migration_id=migration_id,
                        kind=kind,
                        site=site,
                        ref=ref,
                        status="present",
                        created_at=utcnow(),
                    )
                )

    def artifacts(self, migration_id: str, status: str | None = "present") -> list[Artifact]:
        query = (
            select(ArtifactRow)
            .where(ArtifactRow.migration_id == migration_id)
            .order_by(ArtifactRow.id)
        )
        if status is not None:
            query = query.where(ArtifactRow.status == status)
        with self._tx() as session:
            return [
                Artifact(row.id, row.migration_id, row.kind, row.site, row.ref, row.status)
                for row in session.scalars(query)
            ]

    def settle_ref(self, migration_id: str, ref: str, status: str) -> None:
        """Settle every present artifact of the migration with that reference."""
        with self._tx() as session:
            session.execute(
                update(ArtifactRow)
                .where(
                    ArtifactRow.migration_id == migration_id,
                    ArtifactRow.ref == ref,
                    ArtifactRow.status == "present",
                )
                .values(status=status, settled_at=utcnow())
            )

    def settle_artifact(self, artifact_id: int, status: str) -> None:
        """Mark an artifact ``removed`` (cleaned up) or ``kept`` (it became the result)."""
        with self._tx() as session:
            _rowcount(
                session,
                update(ArtifactRow)
                .where(ArtifactRow.id == artifact_id)
                .values(status=status, settled_at=utcnow()),
            )

    def unsettled_terminal(self) -> list[str]:
        """Finished migrations that still hold artifacts (a crash between steps)."""
        query = (
            select(ArtifactRow.migration_id)
            .join(MigrationRow, MigrationRow.id == ArtifactRow.migration_id)
            .where(
                ArtifactRow.status == "present",
                MigrationRow.state.in_([s.value for s in TERMINAL]),
                MigrationRow.lease_owner.is_(None),
            )
            .distinct()
        )
        with self._tx() as session:
            return list(session.scalars(query))

    def purge(self, migration_id: str) -> None:
        """Delete a migration and its history (tests and operators cleaning up)."""
        with self._tx() as session:
            session.execute(delete(MigrationRow).where(MigrationRow.id == migration_id))


def _rowcount(session: Session, statement: Executable) -> int:
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _fenced_row(session: Session, migration_id: str, owner: str | None) -> MigrationRow:
    row = session.get(MigrationRow, migration_id)
    if row is None:
        raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
    if owner is not None and row.lease_owner != owner:
        raise LeaseLost(f"lease on migration {migration_id} lost to {row.lease_owner}")
    if (
        owner is None
        and row.lease_owner
        and row.lease_expires_at
        and row.lease_expires_at > utcnow()
    ):
        raise LeaseLost(f"migration {migration_id} is held by {row.lease_owner}")
    return row


def _transition_values(new_state: State, now: datetime, fields: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"state": new_state.value, "updated_at": now, "attempt": 0, **fields}
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


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - RECORDABLE
    if unknown:
        raise ValueError(f"not recordable: {sorted(unknown)}")


def _audit(
    migration_id: str, from_state: str | None, to_state: str, at: datetime, message: str
) -> TransitionRow:
    return TransitionRow(
        migration_id=migration_id,
        from_state=from_state,
        to_state=str(to_state),
        at=at,
        host=HOST,
        pid=os.getpid(),
        message=message,
    )
