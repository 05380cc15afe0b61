"""The stall watchdog: a transfer that stops moving is aborted, not waited for.

Socket timeouts bound each read and write, but not a peer that trickles a byte
now and then, nor a library that retries a timed-out request on its own, nor a
thread stuck in another library's call. So every transfer (a download into the
work dir, an upload to a destination) runs under a ``Watchdog``: the step's
checkpoints feed it the bytes done, and when they have not grown for
``stall_seconds`` it asks the sites' drivers to ``abort()`` — each cuts its open
connections (``live_sockets``), so whatever call is blocked on a silent peer
returns with a connection error. That includes a peer that took every byte and
never answers the upload. The transfer's own error handling then runs as for
any broken connection (journals saved, streams and reader threads closed), and
the error leaving the watched block becomes ``Stalled``, a transient error:
the supervisor retries the migration with backoff, resuming where the ledger says.

A driver that waits on its site for something with a deadline of its own (a
snapshot completing, a hash computed on the host) moves no bytes meanwhile; it
says so with ``waiting()``, and the watchdog does not count that time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from migratio.errors import Stalled, StepInterrupted
from migratio.text import one_line

log = logging.getLogger(__name__)

STALL_SECONDS = 120.0
# How often the watchdog looks, at most (a tenth of stall_seconds when that is shorter).
LOOK_SECONDS = 1.0

_WATCHING: ContextVar[Watchdog | None] = ContextVar("migratio_stall_watchdog", default=None)


@runtime_checkable
class Abortable(Protocol):
    """A driver that can cut its connections from another thread."""

    def abort(self) -> None: ...


class Watchdog:
    """Aborts a transfer that reports no progress for ``seconds``.

    seconds: the daemon's ``stall_seconds``.
    what: names the transfer in log lines and errors (``migration <id>``).
    sites: the drivers the transfer talks to; on a stall each one that has
        ``abort()`` is aborted, and again every look until the transfer has
        returned (a library's own retry opens new connections).

    ``saw`` is called at every checkpoint, from any thread; it is cheap.
    """

    def __init__(self, seconds: float, what: str, sites: Iterable[object] = ()) -> None:
        self.seconds = seconds
        self.what = what
        self._sites = [site for site in sites if isinstance(site, Abortable)]
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._highest: int | None = None
        self._waiting = 0
        # Seconds without progress when the watchdog fired, in the last watched block.
        self.fired_after: float | None = None

    def saw(self, bytes_done: int) -> None:
        """A checkpoint: progress when more bytes are done than before in this block."""
        if self._highest is None or bytes_done > self._highest:
            self._highest = bytes_done
            self._last = time.monotonic()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Watch the block; an error leaving it after a stall becomes ``Stalled``."""
        self._last = time.monotonic()
        self._highest = None
        self._waiting = 0
        self.fired_after = None
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(done,), name="stall-watchdog", daemon=True
        )
        token = _WATCHING.set(self)
        watcher.start()
        try:
            yield
        except StepInterrupted:
            raise  # shutdown, cancel or a lost lease: said at a checkpoint, so not stalled
        except Exception as exc:
            if self.fired_after is None:
                raise
            raise Stalled(
                f"stalled: no progress for {self.seconds:g} s; aborted "
                f"({one_line(exc, 300) or type(exc).__name__})"
            ) from exc
        finally:
            done.set()
            watcher.join()
            _WATCHING.reset(token)

    def _watch(self, done: threading.Event) -> None:
        look = min(LOOK_SECONDS, self.seconds / 10)
        while not done.wait(look):
            if self.fired_after is None:
                quiet = time.monotonic() - self._last
                if self._waiting or quiet < self.seconds:
                    continue
                self.fired_after = quiet
                log.warning(
                    "%s: stalled: no progress for %.1f s (at byte %s); cutting its connections",
                    self.what,
                    quiet,
                    self._highest if self._highest is not None else 0,
                )
            self._abort()

    def _abort(self) -> None:
        for site in self._sites:
            try:
                site.abort()
            except Exception as exc:  # one site's failure must not spare the others
                log.warning("%s: aborting %r failed: %s", self.what, site, one_line(exc))

    def _wait(self, delta: int) -> None:
        with self._lock:
            self._waiting += delta
            self._last = time.monotonic()


@contextmanager
def waiting() -> Iterator[None]:
    """Around a wait on the site that has a deadline of its own: not a stall.

    Outside a watched block (tests, tools) it does nothing.
    """
    watchdog = _WATCHING.get()
    if watchdog is None:
        yield
        return
    watchdog._wait(+1)
    try:
        yield
    finally:
        watchdog._wait(-1)
