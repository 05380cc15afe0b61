"""The feedback outbox: what Atmosphere hears, as Sidekiq jobs that wait in the ledger
until Redis takes them.

The ledger writes the job reporting a change in the transaction of that change
(``status_job`` is its change hook), so a Redis outage neither loses one nor
holds up a migration. Storage and delivery order live in the ledger
(``migratio.ledger.outbox``); the texts and the Sidekiq envelope live here.
"""

from __future__ import annotations

import time
from datetime import timedelta

from migratio import sidekiq
from migratio.feedback.messages import failure_text, status_text
from migratio.ledger.outbox import Sender
from migratio.ledger.store import Change, Ledger

QUEUE = "feedback"
# The full name: without the module the Ruby side fails with NameError.
WORKER_CLASS = "Atmosphere::UpdateMigrationJobStatusWorker"
# Delivered jobs are kept this long for operators, then pruned.
KEEP_DELIVERED = timedelta(days=7)


def status_job(change: Change) -> sidekiq.Job:
    """The ledger's change hook: the job that reports ``change``."""
    migration = change.migration
    return _job(migration.image_id, migration.source_site, migration.dest_site, status_text(change))


class Outbox:
    """Feedback jobs in the ledger's outbox: failure reports queued, jobs delivered."""

    def __init__(self, ledger: Ledger) -> None:
        self._table = ledger.outbox

    def report_failure(self, image_id: str, source_site: str, dest_site: str, reason: str) -> None:
        """Queue a failure report for a job that never became a migration."""
        self._table.put(_job(image_id, source_site, dest_site, failure_text(reason)))

    def deliver(self, send: Sender, limit: int = 100) -> int:
        """Send up to ``limit`` undelivered jobs, oldest first, and mark them; how many.

        If ``send`` raises, nothing is marked and the same jobs come next time.
        Delivery is at least once: a daemon that dies between sending and
        marking sends those jobs again.
        """
        return self._table.deliver(send, limit)

    def pending(self) -> int:
        return self._table.pending()

    def prune(self) -> int:
        """Forget delivered jobs older than ``KEEP_DELIVERED``; how many."""
        return self._table.prune(KEEP_DELIVERED)


def _job(image_id: str, source_site: str, dest_site: str, text: str) -> sidekiq.Job:
    return sidekiq.Job(
        queue=QUEUE,
        worker_class=WORKER_CLASS,
        args=[image_id, source_site, dest_site, text],
        jid=sidekiq.new_jid(),
        created_at=time.time(),
    )
