"""A token bucket for bytes, shared by the threads that send through one cap.

Why not a library: pyrate-limiter (the well-kept one) keeps a log of events
and stores a request of weight N as N items, which for bytes at tens of MiB/s
is millions of items a second; its rates are also fixed when it is built, and a
weekly schedule changes them. What a bandwidth cap needs is small: a rate, a
burst, and a reservation that tells each sender how long to wait.

Reservations may take the bucket into debt: a sender that asks for more than
is there gets the bytes booked at once and waits until the debt is paid back,
so concurrent senders are served in the order they asked and the rate over any
interval stays within ``burst + rate * interval``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A cap may be exceeded over any interval by at most this much of a second's worth.
BURST_SECONDS = 0.25


class TokenBucket:
    """Bytes per second with a burst of ``BURST_SECONDS`` of the rate.

    rate: bytes per second (> 0); ``set_rate`` changes it (a schedule).
    clock: monotonic seconds (tests give their own).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = float(rate)
        self._tokens = self.burst
        self._stamp = clock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._rate * BURST_SECONDS

    def set_rate(self, rate: float) -> None:
        """A new rate from now on; what is banked is kept up to the new burst."""
        with self._lock:
            self._refill()
            self._rate = float(rate)
            self._tokens = min(self._tokens, self.burst)

    def reserve(self, amount: int) -> float:
        """Book ``amount`` bytes; return the seconds to wait before sending them."""
        with self._lock:
            self._refill()
            self._tokens -= amount
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
