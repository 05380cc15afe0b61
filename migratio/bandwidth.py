"""The bandwidth caps of one daemon: per site, and for the whole daemon.

A site's cap (``max_mib_per_s`` in its file) counts the bytes read from it and
written to it by every migration this daemon runs; the daemon's cap
(``max_mib_per_s`` in migratio.yml) counts every byte moved. A streamed chunk
is read from the source and written to the destination at once, so it counts
for both sites (and once for the daemon). Each cap is a ``TokenBucket``; a
sender waits for the longest of the waits its caps ask for, not their sum.

The caps are looked up on every chunk, so a weekly schedule and a reload
(SIGHUP) apply at once to running transfers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime

from migratio import metrics
from migratio.cap_schedule import Cap, bytes_per_second
from migratio.throttle import TokenBucket

# Chunks larger than a cap's burst are sent in pieces, so that one big chunk
# cannot exceed the burst; never smaller than this, to keep the overhead small.
MIN_PIECE = 16 * 1024

# The cap of a site id, or with None the daemon's, as configured now.
CapsOf = Callable[[str | None], Cap]


class Bandwidth:
    """Paces the bytes of this daemon's transfers.

    caps: the cap of a site id, or with None the daemon's, as configured now.
    stop: set when the daemon stops: a waiting sender returns at once (its next
        checkpoint stops it).
    clock, now, sleep: monotonic time, wall time for schedules, and the wait
        (tests give their own).
    """

    def __init__(
        self,
        caps: CapsOf,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._caps = caps
        self._clock = clock
        self._now = now
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock = threading.Lock()
        self._buckets: dict[str | None, TokenBucket] = {}

    def paced(self, chunks: Iterable[bytes], sites: Sequence[str]) -> Iterator[bytes]:
        """Pass ``chunks`` through, each once the caps of ``sites`` and the daemon allow."""
        for chunk in chunks:
            buckets = self._buckets_of(sites)
            if not buckets:
                yield chunk
                continue
            piece = max(MIN_PIECE, int(min(bucket.burst for _, bucket in buckets)))
            if len(chunk) <= piece:
                self._wait(buckets, len(chunk))
                yield chunk
                continue
            view = memoryview(chunk)
            for start in range(0, len(chunk), piece):
                part = bytes(view[start : start + piece])
                self._wait(buckets, len(part))
                yield part

    def pace(self, amount: int, sites: Sequence[str]) -> None:
        """Wait until ``amount`` bytes may be moved to or from ``sites`` (a driver
        that reads the payload from a file and sends it itself calls this)."""
        buckets = self._buckets_of(sites)
        if buckets:
            self._wait(buckets, amount)

    def rate(self, site: str | None) -> float | None:
        """The cap of a site (None: the daemon's) in force now, bytes per second."""
        return bytes_per_second(self._caps(site), self._now())

    def _buckets_of(self, sites: Sequence[str]) -> list[tuple[str | None, TokenBucket]]:
        buckets = []
        for key in (*dict.fromkeys(sites), None):
            rate = self.rate(key)
            with self._lock:
                if rate is None:
                    # Uncapped now: a cap that comes back starts with a fresh bucket.
                    self._buckets.pop(key, None)
                    continue
                bucket = self._buckets.get(key)
                if bucket is None:
                    bucket = self._buckets[key] = TokenBucket(rate, self._clock)
                elif bucket.rate != rate:
                    bucket.set_rate(rate)
            buckets.append((key, bucket))
        return buckets

    def _wait(self, buckets: list[tuple[str | None, TokenBucket]], amount: int) -> None:
        delays = [(bucket.reserve(amount), key or "daemon") for key, bucket in buckets]
        delay, held_by = max(delays)
        if delay > 0 and not self._stop.is_set():
            metrics.throttled(held_by, delay)
            self._sleep(delay)
