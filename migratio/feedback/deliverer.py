"""The thread that sends the feedback outbox to Redis, in order, while Redis is reachable."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from migratio import sidekiq
from migratio.errors import LedgerError
from migratio.feedback.outbox import Outbox
from migratio.redis_link import UNAVAILABLE, RedisLink

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 3600.0


class Deliverer:
    """Sends what the outbox holds as Sidekiq jobs under ``namespace``.

    Looks for new feedback every ``poll_seconds`` (0.5 s: status lines reach
    Atmosphere within a second without a busy loop on the ledger), sends up to
    ``batch`` jobs per Redis round trip. A stop flushes what is left for up to
    the given seconds, unless Redis is down.
    """

    def __init__(
        self,
        outbox: Outbox,
        link: RedisLink,
        namespace: str,
        *,
        poll_seconds: float = 0.5,
        batch: int = 100,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._stopping = threading.Event()
        self._flush_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_seconds: float = 5.0) -> None:
        self._flush_seconds = flush_seconds
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while not self._stopping.is_set():
            delay = self._deliver_some()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                self._prune()
            if delay:
                self._stopping.wait(delay)
        self._flush()

    def _deliver_some(self) -> float:
        """Send one batch; return how long to wait before the next (0: more is waiting)."""
        try:
            sent = self.outbox.deliver(self._send, self.batch)
        except UNAVAILABLE as exc:
            return self.link.failed(exc)
        except LedgerError as exc:
            log.warning("feedback: cannot read the outbox: %s", exc.reason)
            return 2.0
        return 0.0 if sent == self.batch else self.poll_seconds

    def _send(self, jobs: Sequence[sidekiq.Job]) -> None:
        sidekiq.push(self.link.client, self.namespace, jobs)
        self.link.succeeded()
        log.debug("feedback: sent %d jobs", len(jobs))

    def _flush(self) -> None:
        deadline = time.monotonic() + self._flush_seconds
        while time.monotonic() < deadline and not self.link.down:
            try:
                if self.outbox.deliver(self._send, self.batch) == 0:
                    return
            except UNAVAILABLE as exc:
                self.link.failed(exc)
                return
            except LedgerError:
                return
        if (left := self._pending()) > 0:
            log.warning("feedback: %d messages wait in the ledger for the next start", left)

    def _pending(self) -> int:
        try:
            return self.outbox.pending()
        except LedgerError:
            return -1

    def _prune(self) -> None:
        try:
            self.outbox.prune()
        except LedgerError as exc:
            log.warning("feedback: cannot prune the outbox: %s", exc.reason)
