"""Counts for monitoring: how many migrations are in each state, per pair of sites,
and how much feedback waits in the outbox.

Two aggregate queries, no rows loaded: cheap enough for a Prometheus scrape
every few seconds, and the same answer from every daemon on a shared ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from migratio.ledger.models import FeedbackRow, MigrationRow


@dataclass(frozen=True)
class Census:
    """Migrations by (state, source site, destination site), and undelivered feedback jobs."""

    migrations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    feedback_backlog: int = 0


def take(connection: Connection) -> Census:
    by_state = select(
        MigrationRow.state, MigrationRow.source_site, MigrationRow.dest_site, func.count()
    ).group_by(MigrationRow.state, MigrationRow.source_site, MigrationRow.dest_site)
    backlog = select(func.count()).where(FeedbackRow.delivered_at.is_(None))
    return Census(
        migrations={
            (state, source, dest): int(count)
            for state, source, dest, count in connection.execute(by_state)
        },
        feedback_backlog=int(connection.scalar(backlog) or 0),
    )
