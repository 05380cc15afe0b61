"""Ledger operations. Every state change commits with its audit row, and every write
by a worker is fenced by its lease, so a process that lost its lease changes nothing.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import CursorResult, Engine, Executable, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from migratio.errors import LeaseLost, UnknownMigration, UsageError
from migratio.ledger.models import ArtifactRow, JobRow, MigrationRow, TransitionRow
from migratio.machine import ACTIVE, TERMINAL, State, next_state

HOST = socket.gethostname()
ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
# Any constant shared by every migratio process: the intake's advisory lock.
_INTAKE_LOCK_KEY = 0x6D696769  # "migi"


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


class ArtifactStatus(StrEnum):
    PRESENT = "present"  # exists, or may: cleanup removes it unless it is kept
    KEPT = "kept"  # became (part of) the result
    REMOVED = "removed"  # cleaned up


@dataclass(frozen=True)
class Artifact:
    """Something a migration created; ``last_error`` says why removing it failed so far."""

    id: int
    migration_id: str
    kind: str
    site: str | None
    ref: str
    status: str
    last_error: str | None = None
    attempts: int = 0

    @classmethod
    def of(cls, row: ArtifactRow) -> Artifact:
        return cls(
            row.id,
            row.migration_id,
            row.kind,
            row.site,
            row.ref,
            row.status,
            row.last_error,
            row.attempts or 0,
        )


@dataclass(frozen=True)
class Change:
    """A migration created, moved to another state, or joined by another job.

    The ledger hands it to its change hook inside the transaction that makes the
    change, so whatever the hook writes (the feedback outbox) commits with it.
    ``from_state`` is None for a new migration; ``joined_by`` names a job that
    attached itself to this migration (no state change).
    """

    migration: Migration
    from_state: str | None
    message: str
    joined_by: str | None = None


ChangeHook = Callable[[Session, Change], None]


@dataclass(frozen=True)
class JobRequest:
    """A job from the intake: migrate ``image_id`` from ``source_site`` to ``dest_site``.

    ``origin`` says where it came from, for the audit trail (e.g. the Redis queue).
    """

    job_id: str
    source_site: str
    dest_site: str
    image_id: str
    origin: str


class JobOutcome(StrEnum):
    CREATED = "created"  # a new migration
    ATTACHED = "attached"  # joined a migration of the same image and sites under way
    DUPLICATE = "duplicate"  # this job id is already in the ledger: nothing recorded


@dataclass(frozen=True)
class JobRecorded:
    job: JobRequest
    outcome: JobOutcome
    migration_id: str


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

    def __init__(self, engine: Engine, *, on_change: ChangeHook | None = None) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._on_change = on_change

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
        row = _new_migration(source_site, dest_site, image_id, job_id)
        with self._tx() as session:
            session.add(row)
            session.flush()
            self._created(session, row, message)
        return Migration.of(row)

    def accept_jobs(self, jobs: Sequence[JobRequest]) -> list[JobRecorded]:
        """Record intake jobs in one transaction, each job id at most once.

        A job for an image and pair of sites that already has a migration under
        way joins it instead of starting a second one.
        """
        with self._tx() as session:
            if self.engine.dialect.name == "postgresql":
                # Two daemons taking jobs for the same image at once must not both
                # start a migration: intake transactions take turns (they last
                # milliseconds). SQLite's BEGIN IMMEDIATE serialises them already.
                session.execute(select(func.pg_advisory_xact_lock(_INTAKE_LOCK_KEY)))
            return self._accept(session, jobs)

    def _accept(self, session: Session, jobs: Sequence[JobRequest]) -> list[JobRecorded]:
        # Set-based, so a batch costs a handful of statements, not a handful per job.
        seen = select(JobRow.job_id, JobRow.migration_id).where(
            JobRow.job_id.in_({job.job_id for job in jobs})
        )
        known = {job_id: migration_id for job_id, migration_id in session.execute(seen)}
        running: dict[tuple[str, str, str], MigrationRow] = {}
        under_way = (
            select(MigrationRow)
            .where(
                MigrationRow.image_id.in_({job.image_id for job in jobs}),
                MigrationRow.state.in_([s.value for s in ACTIVE]),
            )
            .order_by(MigrationRow.created_at.desc())
        )
        for row in session.scalars(under_way):  # newest first, so the oldest wins
            running[(row.image_id, row.source_site, row.dest_site)] = row
        taken: list[tuple[JobRecorded, MigrationRow]] = []
        results: list[JobRecorded] = []
        for job in jobs:
            if job.job_id in known:
                results.append(JobRecorded(job, JobOutcome.DUPLICATE, known[job.job_id]))
                continue
            key = (job.image_id, job.source_site, job.dest_site)
            outcome = JobOutcome.ATTACHED
            if key not in running:
                running[key] = _new_migration(
                    job.source_site, job.dest_site, job.image_id, job.job_id
                )
                session.add(running[key])
                outcome = JobOutcome.CREATED
            row = running[key]
            known[job.job_id] = row.id
            taken.append((JobRecorded(job, outcome, row.id), row))
            results.append(taken[-1][0])
        session.flush()  # the new migrations first: the rows below refer to them
        now = utcnow()
        for result, row in taken:
            origin = f"job {result.job.job_id} from {result.job.origin}"
            if result.outcome is JobOutcome.CREATED:
                self._created(session, row, origin)
            else:
                message = f"{origin} joined this migration"
                session.add(_audit(row.id, row.state, row.state, now, message))
                change = Change(Migration.of(row), row.state, message, result.job.job_id)
                self._changed(session, change)
            session.add(
                JobRow(
                    job_id=result.job.job_id,
                    migration_id=row.id,
                    outcome=result.outcome.value,
                    received_at=now,
                )
            )
        return results

    def _created(self, session: Session, row: MigrationRow, message: str) -> None:
        session.add(_audit(row.id, None, State.QUEUED, row.created_at, message))
        self._changed(session, Change(Migration.of(row), None, message))

    def _changed(self, session: Session, change: Change) -> None:
        if self._on_change is not None:
            self._on_change(session, change)

    def get(self, migration_id: str) -> Migration:
        with self._tx() as session:
            row = session.get(MigrationRow, migration_id)
            if row is None:
                raise UnknownMigration(f"no migration {migration_id!r} in the ledger")
            return Migration.of(row)

    def find(self, prefix: str) -> Migration:
        """A migration by full id or unique id prefix (operators type short ids).

        Matched literally: only lowercase hex digits and '-' can be part of an
        id, so no LIKE wildcard or case folding can widen the match.
        """
        if not ID_PREFIX.fullmatch(prefix):
            raise UsageError(
                f"{prefix!r} is not a migration id or id prefix (lowercase hex digits and '-')"
            )
        with self._tx() as session:
            rows = session.scalars(
                select(MigrationRow)
                .where(MigrationRow.id.startswith(prefix, autoescape=True))
                .limit(2)
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
            moved = Migration.of(row)
            self._changed(session, Change(moved, old_state, message))
            return moved

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

    def artifacts(
        self,
        migration_id: str,
        status: str | None = ArtifactStatus.PRESENT,
        *,
        due_only: bool = False,
    ) -> list[Artifact]:
        """The migration's artifacts, oldest first; ``due_only``: those whose
        removal is not waiting for a retry."""
        query = (
            select(ArtifactRow)
            .where(ArtifactRow.migration_id == migration_id)
            .order_by(ArtifactRow.id)
        )
        if status is not None:
            query = query.where(ArtifactRow.status == status)
        if due_only:
            query = query.where(_removal_due(utcnow()))
        with self._tx() as session:
            return [Artifact.of(row) for row in session.scalars(query)]

    def settle_ref(self, migration_id: str, ref: str, status: str) -> None:
        """Settle every present artifact of the migration with that reference."""
        with self._tx() as session:
            session.execute(
                update(ArtifactRow)
                .where(
                    ArtifactRow.migration_id == migration_id,
                    ArtifactRow.ref == ref,
                    ArtifactRow.status == ArtifactStatus.PRESENT,
                )
                .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None)
            )

    def settle_artifact(self, artifact_id: int, status: str) -> None:
        """Mark an artifact ``removed`` (cleaned up) or ``kept`` (it became the result)."""
        with self._tx() as session:
            _rowcount(
                session,
                update(ArtifactRow)
                .where(ArtifactRow.id == artifact_id)
                .values(status=status, settled_at=utcnow(), last_error=None, next_attempt_at=None),
            )

    def defer_artifact(self, artifact_id: int, error: str, delay: float) -> None:
        """Removing the artifact failed: keep it present with the reason, retry after ``delay``."""
        with self._tx() as session:
            _rowcount(
                session,
                update(ArtifactRow)
                .where(ArtifactRow.id == artifact_id)
                .values(
                    last_error=error,
                    attempts=ArtifactRow.attempts + 1,
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                ),
            )

    def unsettled_terminal(self) -> list[str]:
        """Finished migrations that still hold artifacts due for removal (a crash
        between steps, or a removal that failed and waits for its retry)."""
        query = (
            select(ArtifactRow.migration_id)
            .join(MigrationRow, MigrationRow.id == ArtifactRow.migration_id)
            .where(
                ArtifactRow.status == ArtifactStatus.PRESENT,
                _removal_due(utcnow()),
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


def _removal_due(now: datetime) -> Any:
    return or_(ArtifactRow.next_attempt_at.is_(None), ArtifactRow.next_attempt_at <= now)


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


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - RECORDABLE
    if unknown:
        raise ValueError(f"not recordable: {sorted(unknown)}")


def _new_migration(
    source_site: str, dest_site: str, image_id: str, job_id: str | None
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
        created_at=now,
        updated_at=now,
    )


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
