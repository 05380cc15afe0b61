"""The feedback outbox: Sidekiq jobs that wait in the ledger until Redis takes them.

A feedback job is written in the transaction of the change it reports (the
ledger calls ``Outbox.record`` from inside it), so a Redis outage neither loses
one nor holds up a migration. ``deliver`` hands them to a sender in the order
they were written and marks them delivered once sent. Delivery is at least
once: a daemon that dies between sending and marking sends those jobs again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from migratio import sidekiq
from migratio.feedback.messages import failure_text, status_text
from migratio.ledger.models import FeedbackRow
from migratio.ledger.store import Change, utcnow

QUEUE = "feedback"
# The full name: without the module the Ruby side fails with NameError.
WORKER_CLASS = "Atmosphere::UpdateMigrationJobStatusWorker"
# Delivered rows are kept this long for operators, then pruned.
KEEP_DELIVERED = timedelta(days=7)
# Daemons sharing a PostgreSQL ledger take turns delivering, so the order holds.
_DELIVERY_LOCK_KEY = 0x6D696766  # "migf"

Sender = Callable[[Sequence[sidekiq.Job]], None]


class Outbox:
    """Feedback jobs in the ledger's ``feedback_outbox`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def record(self, session: Session, change: Change) -> None:
        """The ledger's change hook: queue the status text of ``change`` in its transaction."""
        migration = change.migration
        session.add(
            _row(
                migration.id,
                [migration.image_id, migration.source_site, migration.dest_site],
                status_text(change),
            )
        )

    def report_failure(self, image_id: str, source_site: str, dest_site: str, reason: str) -> None:
        """Queue a failure report for a job that never became a migration."""
        with self._tx() as session:
            session.add(_row(None, [image_id, source_site, dest_site], failure_text(reason)))

    def deliver(self, send: Sender, limit: int = 100) -> int:
        """Send up to ``limit`` undelivered jobs, oldest first, and mark them; how many.

        If ``send`` raises, nothing is marked and the same jobs come next time.
        """
        if self.engine.dialect.name == "postgresql":
            with self._tx() as session:
                locked = session.scalar(select(func.pg_try_advisory_xact_lock(_DELIVERY_LOCK_KEY)))
                if not locked:
                    return 0
                rows = self._undelivered(session, limit)
                if rows:
                    send([_job(row) for row in rows])
                    self._mark(session, rows)
                return len(rows)
        # SQLite: one daemon per ledger file; keep its write lock out of the Redis call.
        with self._tx() as session:
            rows = self._undelivered(session, limit)
        if rows:
            send([_job(row) for row in rows])
            with self._tx() as session:
                self._mark(session, rows)
        return len(rows)

    def pending(self) -> int:
        with self._tx() as session:
            query = select(func.count()).where(FeedbackRow.delivered_at.is_(None))
            return int(session.scalar(query) or 0)

    def prune(self) -> int:
        """Forget delivered jobs older than ``KEEP_DELIVERED``; how many."""
        with self._tx() as session:
            result = session.execute(
                delete(FeedbackRow).where(FeedbackRow.delivered_at < utcnow() - KEEP_DELIVERED)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @staticmethod
    def _undelivered(session: Session, limit: int) -> list[FeedbackRow]:
        query = (
            select(FeedbackRow)
            .where(FeedbackRow.delivered_at.is_(None))
            .order_by(FeedbackRow.id)
            .limit(limit)
        )
        return list(session.scalars(query))

    @staticmethod
    def _mark(session: Session, rows: Sequence[FeedbackRow]) -> None:
        session.execute(
            update(FeedbackRow)
            .where(FeedbackRow.id.in_([row.id for row in rows]))
            .values(delivered_at=utcnow())
        )


def _row(migration_id: str | None, image_and_sites: list[str], text: str) -> FeedbackRow:
    return FeedbackRow(
        migration_id=migration_id,
        jid=sidekiq.new_jid(),
        queue=QUEUE,
        worker_class=WORKER_CLASS,
        args=json.dumps([*image_and_sites, text], ensure_ascii=False),
        created_at=time.time(),
    )


def _job(row: FeedbackRow) -> sidekiq.Job:
    return sidekiq.Job(
        queue=row.queue,
        worker_class=row.worker_class,
        args=json.loads(row.args),
        jid=row.jid,
        created_at=row.created_at,
    )
