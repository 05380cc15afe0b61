"""Polling with backoff: ask again, waiting longer each time, until an answer or a deadline.

One helper for every "is it ready yet?" loop (an AMI becoming available, a
snapshot completing, an import task, a ledger coming back), so the backoff and
the deadline are written once. The schedule of a whole migration's retries is a
different thing: it lives in the ledger (``migratio.retry``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays of ``first`` seconds, multiplied by ``factor`` each time, at most ``longest``."""

    first: float = 0.5
    factor: float = 1.5
    longest: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.longest, delay * self.factor)


def poll(
    check: Callable[[], T | None],
    backoff: Backoff,
    *,
    timeout: float | None = None,
    between: Callable[[], None] = lambda: None,
    wait: Callable[[float], None] = time.sleep,
) -> T | None:
    """Call ``check`` until it returns something other than None, and return that.

    Returns None once ``timeout`` seconds have passed without an answer.
    ``between`` runs before each wait (progress reports, checkpoints: it may
    raise to stop); ``wait`` sleeps (or raises to stop, e.g. on shutdown).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for delay in backoff.delays():
        answer = check()
        if answer is not None:
            return answer
        if deadline is not None and time.monotonic() >= deadline:
            return None
        between()
        wait(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")  # pragma: no cover - delays() never ends
