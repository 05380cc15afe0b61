"""When the supervisor's loop looks at the ledger again: at its next poll, at
once when told (a worker finished, a reload), or when a retry or a wait that
this daemon scheduled falls due, so a retry starts on time and not up to a
poll interval late."""

from __future__ import annotations

import heapq
import threading
import time


class Wakeup:
    """An event the loop waits on, plus the times at which it fires by itself."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._due: list[float] = []  # monotonic times, a heap

    def now(self) -> None:
        """Wake the loop at once."""
        self._event.set()

    def after(self, seconds: float) -> None:
        """Wake the loop in ``seconds`` (something becomes claimable then)."""
        with self._lock:
            heapq.heappush(self._due, time.monotonic() + seconds)

    def wait(self, limit: float) -> None:
        """Sleep until woken, until the earliest due time, or ``limit`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._due and self._due[0] <= now:
                heapq.heappop(self._due)
            if self._due:
                limit = min(limit, self._due[0] - now)
        self._event.wait(max(0.0, limit))
        self._event.clear()
