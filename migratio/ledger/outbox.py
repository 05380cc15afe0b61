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
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, select, update

from migratio import sidekiq
from migratio.ledger.boundary import transaction
from migratio.ledger.models import FEEDBACK
from migratio.ledger.rows import Executor, rowcount
from migratio.ledger.types import utcnow

# Daemons sharing a PostgreSQL ledger take turns delivering, so the order holds.
DELIVERY_LOCK_KEY = 0x6D696766  # "migf"

Sender = Callable[[Sequence[sidekiq.Job]], None]


class OutboxTable:
    """Feedback jobs in the ledger, oldest first."""

    def __init__(self, engine: Engine) -> None:
        self._shared = engine.dialect.name == "postgresql"
        self._engine = engine

    @staticmethod
    def add(session: Executor, migration_id: str | None, job: sidekiq.Job) -> None:
        """Queue ``job`` in the transaction of the change it reports."""
        session.execute(
            insert(FEEDBACK).values(
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
        with transaction(self._engine) as connection:
            self.add(connection, None, job)

    def deliver(self, send: Sender, limit: int) -> int:
        """Send up to ``limit`` undelivered jobs, oldest first, and mark them; how many.

        If ``send`` raises, nothing is marked and the same jobs come next time.
        """
        if self._shared:
            with transaction(self._engine) as connection:
                try_lock = select(func.pg_try_advisory_xact_lock(DELIVERY_LOCK_KEY))
                locked = connection.scalar(try_lock)
                if not locked:
                    return 0
                rows = _undelivered(connection, limit)
                if rows:
                    send([_job(row) for row in rows])
                    _mark(connection, rows)
                return len(rows)
        # SQLite: one daemon per ledger file; keep its write lock out of the Redis call.
        with transaction(self._engine) as connection:
            rows = _undelivered(connection, limit)
        if rows:
            send([_job(row) for row in rows])
            with transaction(self._engine) as connection:
                _mark(connection, rows)
        return len(rows)

    def pending(self) -> int:
        query = select(func.count()).where(FEEDBACK.c.delivered_at.is_(None))
        with transaction(self._engine) as connection:
            return int(connection.scalar(query) or 0)

    def prune(self, keep: timedelta) -> int:
        """Forget jobs delivered more than ``keep`` ago; how many."""
        old = delete(FEEDBACK).where(FEEDBACK.c.delivered_at < utcnow() - keep)
        with transaction(self._engine) as connection:
            return rowcount(connection, old)


def _undelivered(connection: Connection, limit: int) -> list[Row[Any]]:
    query = (
        select(FEEDBACK)
        .where(FEEDBACK.c.delivered_at.is_(None))
        .order_by(FEEDBACK.c.id)
        .limit(limit)
    )
    return list(connection.execute(query))


def _mark(connection: Connection, rows: Sequence[Row[Any]]) -> None:
    connection.execute(
        update(FEEDBACK)
        .where(FEEDBACK.c.id.in_([row.id for row in rows]))
        .values(delivered_at=utcnow()),
    )


def _job(row: Row[Any]) -> sidekiq.Job:
    return sidekiq.Job(
        queue=row.queue,
        worker_class=row.worker_class,
        args=json.loads(row.args),
        jid=row.jid,
        created_at=row.created_at,
    )
