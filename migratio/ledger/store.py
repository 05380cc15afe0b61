"""The ledger, as the rest of migratio sees it: one ``Ledger`` in front of its parts
(reads, writes, leases, intake jobs, artifacts, feedback outbox).

Every method is one transaction. Every state change commits with its audit
row, and every write by a worker is fenced by its lease, so a process that lost
its lease changes nothing. Database failures come out as ``LedgerUnavailable``,
``JobConflict`` or ``LedgerError`` (``migratio.errors``), never as SQLAlchemy's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from migratio.errors import JobConflict, LedgerError
from migratio.ledger import artifacts, census, groups, leases, reads, versions, writes
from migratio.ledger import jobs as intake_jobs
from migratio.ledger import slots as site_slots
from migratio.ledger.boundary import orm_transaction, reading, transaction
from migratio.ledger.census import Census
from migratio.ledger.database import open_engine
from migratio.ledger.outbox import OutboxTable
from migratio.ledger.rows import HOST, Executor
from migratio.ledger.types import (
    RECORDABLE,
    Artifact,
    ArtifactStatus,
    Change,
    ChangeHook,
    JobOutcome,
    JobRecorded,
    JobRequest,
    KeptManifest,
    Migration,
    MigrationFilter,
    Transition,
    UploadProgress,
    utcnow,
)

__all__ = [
    "HOST",
    "RECORDABLE",
    "Artifact",
    "ArtifactStatus",
    "Change",
    "ChangeHook",
    "JobOutcome",
    "JobRecorded",
    "JobRequest",
    "KeptManifest",
    "Ledger",
    "Migration",
    "MigrationFilter",
    "Transition",
    "UploadProgress",
    "utcnow",
]


class Ledger:
    """The persistent truth about every migration.

    ``on_change`` (feedback on) turns every change into the feedback job that
    reports it; the job goes to ``outbox`` in the transaction of the change.
    ``engine`` is for tests that look at the tables themselves.
    """

    def __init__(self, engine: Engine, *, on_change: ChangeHook | None = None) -> None:
        self.engine = engine
        self.outbox = OutboxTable(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._on_change = on_change

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, on_change: ChangeHook | None = None) -> Ledger:
        """The ledger at ``url``, its schema brought up to date (``migrate``), else
        as it is: it must exist, at the newest schema (read-only commands)."""
        return cls(open_engine(url, migrate=migrate), on_change=on_change)

    def close(self) -> None:
        """Close the ledger's connections (the next call opens new ones)."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, conflict: type[LedgerError] = LedgerError) -> Iterator[Connection]:
        with transaction(self.engine, conflict) as connection:
            yield connection

    @contextmanager
    def _orm_tx(self, conflict: type[LedgerError] = LedgerError) -> Iterator[Session]:
        with orm_transaction(self._sessions, conflict) as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with reading(self.engine) as connection:
            yield connection

    def _notify(self, connection: Executor, change: Change) -> None:
        if self._on_change is not None:
            self.outbox.add(connection, change.migration.id, self._on_change(change))

    # ---- creation and reading -------------------------------------------------

    def create(
        self,
        source_site: str,
        dest_site: str,
        image_id: str,
        *,
        job_id: str | None = None,
        message: str = "submitted",
        base_image_id: str | None = None,
    ) -> Migration:
        """A new queued migration; ``base_image_id`` names the image's previous version."""
        with self._tx() as connection:
            return writes.create(
                connection,
                self._notify,
                source_site,
                dest_site,
                image_id,
                job_id,
                message,
                base_image_id,
            )

    def create_group(
        self,
        source_site: str,
        dest_sites: Sequence[str],
        image_id: str,
        *,
        message: str,
        base_image_id: str | None = None,
    ) -> list[Migration]:
        """One migration per destination in one transaction, grouped (fan-out:
        the source is read once for all of them) when there are several."""
        with self._orm_tx() as session:
            return groups.create(
                session, self._notify, source_site, dest_sites, image_id, message, base_image_id
            )

    def group_members(self, group_id: str) -> list[Migration]:
        with self._read() as connection:
            return groups.members(connection, group_id)

    def group_others_active(self, group_id: str, migration_id: str) -> bool:
        """Whether another member of the group may still use the group's shared files."""
        with self._read() as connection:
            return groups.others_active(connection, group_id, migration_id)

    def accept_jobs(
        self, jobs: Sequence[JobRequest], *, coalesce_seconds: float = 0.0
    ) -> list[JobRecorded]:
        """Record intake jobs in one transaction, each job id at most once.

        A job for an image and pair of sites that already has a migration under
        way joins it instead of starting a second one; with ``coalesce_seconds``,
        one for another destination joins the group of a migration of the same
        image and source created that recently. ``JobConflict``: another
        consumer recorded one of these job ids at the same moment.
        """
        with self._orm_tx(conflict=JobConflict) as session:
            return intake_jobs.accept(session, self._notify, jobs, coalesce_seconds)

    def get(self, migration_id: str) -> Migration:
        with self._read() as connection:
            return reads.get(connection, migration_id)

    def find(self, prefix: str) -> Migration:
        """A migration by full id or unique id prefix (operators type short ids)."""
        with self._read() as connection:
            return reads.find(connection, prefix)

    def migrations(
        self, states: Sequence[str] | None = None, limit: int | None = 1000
    ) -> list[Migration]:
        """Newest first: those in ``states`` (all when None), at most ``limit``."""
        with self._read() as connection:
            return reads.migrations(connection, states or (), limit)

    def history(self, migration_id: str) -> list[Transition]:
        with self._read() as connection:
            return reads.history(connection, migration_id)

    def full_sites(self, slots: Mapping[str, int]) -> dict[str, int]:
        """Of the sites with a ``max_concurrent`` (``slots``), those with no free
        slot now, and how many migrations run to each (for ``status``)."""
        with self._read() as connection:
            return site_slots.full_sites(connection, slots, utcnow()) if slots else {}

    def count_active(self) -> int:
        with self._read() as connection:
            return reads.count_active(connection)

    def count_queued_and_failed_since(self, since: datetime) -> tuple[int, int]:
        """For the daemon's one-line status: queued now, failed since ``since`` (naive UTC)."""
        with self._read() as connection:
            return reads.count_queued_and_failed_since(connection, since)

    # ---- leases ---------------------------------------------------------------

    def claim(
        self,
        owner: str,
        lease_seconds: float,
        skip: Sequence[str] = (),
        slots: Mapping[str, int] | None = None,
    ) -> Migration | None:
        """Take the lease of one due migration, or None; two daemons never both win.

        The candidates are looked up in a read first: an idle daemon polling the
        ledger takes no write lock (SQLite) and opens no write transaction.
        ``slots``: destination site -> most migrations running to it at once; a
        queued migration to a full site is not started, and gets a note saying why.
        """
        with self._read() as connection:
            candidates = leases.claimable(connection, skip, slots)
        if not candidates:
            return None
        with self._tx() as connection:
            return leases.claim(connection, owner, lease_seconds, candidates, slots)

    def acquire(self, migration_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease of one migration if nobody holds it (operator commands)."""
        with self._tx() as connection:
            return leases.acquire(connection, migration_id, owner, lease_seconds)

    def renew(self, owner: str, migration_ids: Sequence[str], lease_seconds: float) -> set[str]:
        """Extend our leases; return the ids whose lease we no longer hold."""
        with self._tx() as connection:
            return leases.renew(connection, owner, migration_ids, lease_seconds)

    def release(self, migration_id: str, owner: str) -> None:
        with self._tx() as connection:
            leases.release(connection, migration_id, owner)

    # ---- fenced writes by the lease holder ------------------------------------

    def transition(
        self,
        migration_id: str,
        owner: str | None,
        trigger: str,
        message: str,
        *,
        keep: Sequence[str] = (),
        **fields: Any,
    ) -> Migration:
        """Apply ``trigger`` and write its audit row in one transaction, settling
        the artifacts in ``keep`` (they became the result) in it too.

        ``owner`` None means an operator command acting on an unleased migration.
        """
        with self._tx() as connection:
            return writes.transition(
                connection, self._notify, migration_id, owner, trigger, message, fields, keep
            )

    def record(self, migration_id: str, owner: str, **fields: Any) -> None:
        with self._tx() as connection:
            writes.record(connection, migration_id, owner, fields)

    def record_progress(
        self, migration_id: str, owner: str, bytes_done: int, *, rate: float | None = None
    ) -> bool:
        """Record how far the running step has got; with ``rate`` (bytes/s), the
        feedback line that reports it goes to the outbox in the same transaction,
        so it reaches the platform in order with the state changes around it.
        Returns whether an operator asked to cancel (read in the same transaction)."""
        with self._tx() as connection:
            writes.record(connection, migration_id, owner, {"bytes_done": bytes_done})
            cancel = reads.cancel_requested(connection, migration_id)
            if rate is not None and self._on_change is not None:
                migration = reads.get(connection, migration_id)
                progress = UploadProgress(
                    migration,
                    migration.state,
                    "progress",
                    bytes_done=bytes_done,
                    bytes_total=migration.bytes_total,
                    bytes_per_second=rate,
                )
                self._notify(connection, progress)
            return cancel

    def schedule_retry(
        self, migration_id: str, owner: str, attempt: int, delay: float, error: str
    ) -> None:
        """Record a transient failure and hand the migration back until its next attempt."""
        with self._tx() as connection:
            writes.schedule_retry(connection, migration_id, owner, attempt, delay, error)

    def wait(self, migration_id: str, owner: str, delay: float, note: str) -> bool:
        """Hand the migration back for ``delay`` seconds without counting an attempt
        (it waits for something, it did not fail); ``note`` ("<why>: <details>")
        goes to the audit trail once per wait. True if it was written now."""
        with self._tx() as connection:
            return writes.wait(connection, migration_id, owner, delay, note)

    def note(self, migration_id: str, owner: str, message: str) -> None:
        """An audit note (no state change) by the lease holder."""
        with self._tx() as connection:
            writes.note(connection, migration_id, owner, message)

    # ---- versions (incremental uploads) ---------------------------------------

    def keep_manifest(self, migration_id: str, owner: str, record_id: str, manifest: bytes) -> None:
        """Keep what the migration's destination record holds, for later versions."""
        with self._orm_tx() as session:
            versions.keep(session, migration_id, owner, record_id, manifest)

    def latest_version(
        self, source_site: str, dest_site: str, image_id: str
    ) -> KeptManifest | None:
        """The newest finished migration of ``image_id`` on that route, with its manifest."""
        with self._read() as connection:
            return versions.latest(connection, source_site, dest_site, image_id)

    def version_of_record(self, dest_site: str, record_id: str) -> KeptManifest | None:
        """The kept manifest of a destination record, if migratio kept one."""
        with self._read() as connection:
            return versions.of_record(connection, dest_site, record_id)

    def request_cancel(self, migration_id: str) -> Migration:
        with self._tx() as connection:
            return writes.request_cancel(connection, migration_id)

    # ---- artifacts ------------------------------------------------------------

    def add_artifact(
        self,
        migration_id: str,
        kind: str,
        ref: str,
        site: str | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Write down something the migration created; with ``owner``, only while
        that lease holder still holds the migration (LeaseLost otherwise)."""
        with self._tx() as connection:
            if owner is not None:
                writes.fenced_row(connection, migration_id, owner)
            artifacts.add(connection, migration_id, kind, ref, site)

    def artifacts(
        self,
        migration_id: str,
        status: str | None = ArtifactStatus.PRESENT,
        *,
        due_only: bool = False,
    ) -> list[Artifact]:
        """The migration's artifacts, oldest first; ``due_only``: those whose
        removal is not waiting for a retry."""
        wanted = None if status is None else ArtifactStatus(status)
        with self._read() as connection:
            return artifacts.listing(connection, migration_id, wanted, due_only)

    def settle_ref(
        self, migration_id: str, ref: str, status: str, *, owner: str | None = None
    ) -> None:
        """Settle every present artifact of the migration with that reference;
        with ``owner``, only while that lease holder still holds the migration."""
        with self._tx() as connection:
            if owner is not None:
                writes.fenced_row(connection, migration_id, owner)
            artifacts.settle_ref(connection, migration_id, ref, ArtifactStatus(status))

    def settle_artifact(self, artifact_id: int, status: str) -> None:
        """Mark an artifact ``removed`` (cleaned up) or ``kept`` (it became the result)."""
        with self._tx() as connection:
            artifacts.settle(connection, artifact_id, ArtifactStatus(status))

    def defer_artifact(self, artifact_id: int, error: str, delay: float) -> None:
        """Removing the artifact failed: keep it present with the reason, retry after ``delay``."""
        with self._tx() as connection:
            artifacts.defer(connection, artifact_id, error, delay)

    def unsettled_terminal(self) -> list[str]:
        """Finished migrations that still hold artifacts due for removal."""
        with self._read() as connection:
            return artifacts.unsettled_terminal(connection)

    def census(self) -> Census:
        """Migrations by state and pair of sites, and the feedback backlog (for metrics)."""
        with self._read() as connection:
            return census.take(connection)
