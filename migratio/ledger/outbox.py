"""The ``feedback_outbox`` table: Sidekiq jobs that wait in the ledger until Redis takes them.

A job reporting a change is written in the transaction of that change, so a
Redis outage neither loses one nor holds up a migration. ``deliver`` hands them
to a sender in the order they were written and marks them delivered once sent.
Delivery is at least once: a daemon that dies between sending and marking
sends those jobs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from migratio import sidekiq
from migratio.ledger.boundary import transaction
from migratio.ledger.models import FeedbackRow
from migratio.ledger.rows import UNSYNCHRONIZED, rowcount
from migratio.ledger.types import utcnow

# Daemons sharing a PostgreSQL ledger take turns delivering, so the order holds.
DELIVERY_LOCK_KEY = 0x6D696766  # "migf"

Sender = Callable[[Sequence[sidekiq.Job]], None]


class OutboxTable:
    """Feedback jobs in the ledger, oldest first."""

    def __init__(self, engine: Engine) -> None:
        self._shared = engine.dialect.name == "postgresql"
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def add(session: Session, migration_id: str | None, job: sidekiq.Job) -> None:
        """Queue ``job`` in the transaction of the change it reports."""
        session.add(
            FeedbackRow(
                migration_id=migration_id,
                jid=job.jid,
                queue=job.queue,
                worker_class=job.worker_class,
                args=json.dumps(list(job.args), ensure_ascii=False),
                created_at=job.created_at,
            )
        )

    def put(self, job: sidekiq.Job) -> None:
        """Queue ``job`` on its own (a report about no migration)."""
        with transaction(self._sessions) as session:
            self.add(session, None, job)

    def deliver(self, send: Sender, limit: int) -> int:
        """Send up to ``limit`` undelivered jobs, oldest first, and mark them; how many.

        If ``send`` raises, nothing is marked and the same jobs come next time.
        """
        if self._shared:
            with transaction(self._sessions) as session:
                locked = session.scalar(select(func.pg_try_advisory_xact_lock(DELIVERY_LOCK_KEY)))
                if not locked:
                    return 0
                rows = _undelivered(session, limit)
                if rows:
                    send([_job(row) for row in rows])
                    _mark(session, rows)
                return len(rows)
        # SQLite: one daemon per ledger file; keep its write lock out of the Redis call.
        with transaction(self._sessions) as session:
            rows = _undelivered(session, limit)
        if rows:
            send([_job(row) for row in rows])
            with transaction(self._sessions) as session:
                _mark(session, rows)
        return len(rows)

    def pending(self) -> int:
        query = select(func.count()).where(FeedbackRow.delivered_at.is_(None))
        with transaction(self._sessions) as session:
            return int(session.scalar(query) or 0)

    def prune(self, keep: timedelta) -> int:
        """Forget jobs delivered more than ``keep`` ago; how many."""
        old = delete(FeedbackRow).where(FeedbackRow.delivered_at < utcnow() - keep)
        with transaction(self._sessions) as session:
            return rowcount(session, old)


def _undelivered(session: Session, limit: int) -> list[FeedbackRow]:
    query = (
        select(FeedbackRow)
        .where(FeedbackRow.delivered_at.is_(None))
        .order_by(FeedbackRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def _mark(session: Session, rows: Sequence[FeedbackRow]) -> None:
    session.execute(
        update(FeedbackRow)
        .where(FeedbackRow.id.in_([row.id for row in rows]))
        .values(delivered_at=utcnow()),
        execution_options=UNSYNCHRONIZED,
    )


def _job(row: FeedbackRow) -> sidekiq.Job:
    return sidekiq.Job(
        queue=row.queue,
        worker_class=row.worker_class,
        args=json.loads(row.args),
        jid=row.jid,
        created_at=row.created_at,
    )
