"""The migrations one daemon runs now, and the heartbeat that keeps their leases.

The supervisor's loop adds a worker per claim and reaps it when it ends; the
heartbeat thread renews the leases of those still running every third of
``lease_seconds`` and flags the ones it lost (another daemon took them over
after our lease expired), so their steps stop at their next checkpoint. Both
threads share the set under one lock: a lease lost by a migration that ended
meanwhile is not flagged, as nothing is left to stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from migratio.ledger.store import Ledger
from migratio.step import Signals

log = logging.getLogger(__name__)


class Running:
    """Migration id -> its worker, for the migrations this daemon drives now."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals
        self._workers: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._workers)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def workers(self) -> list[Future[None]]:
        with self._lock:
            return list(self._workers.values())

    def add(self, migration_id: str, worker: Future[None]) -> None:
        with self._lock:
            self._workers[migration_id] = worker

    def reap(self) -> list[tuple[str, Future[None]]]:
        """Forget the workers that have ended (and any lost lease of theirs)."""
        with self._lock:
            ended = [(id_, worker) for id_, worker in self._workers.items() if worker.done()]
            for migration_id, _worker in ended:
                del self._workers[migration_id]
                self.signals.lost.discard(migration_id)
        return ended

    def flag_lost(self, lost: set[str]) -> set[str]:
        """Tell the steps of those still running that their lease is gone."""
        with self._lock:
            lost = lost & set(self._workers)
            self.signals.lost |= lost
        return lost

    def keep_leases(self, ledger: Ledger, owner: str, lease_seconds: Callable[[], float]) -> None:
        """The heartbeat thread's loop, until the daemon shuts down."""
        while not self.signals.shutting_down.wait(lease_seconds() / 3):
            try:
                lost = ledger.renew(owner, self.ids(), lease_seconds())
            except Exception as exc:
                log.warning("heartbeat: cannot renew leases: %s", exc)
                continue
            for migration_id in self.flag_lost(lost):
                log.warning("migration %s: lease lost; stopping work on it", migration_id)
