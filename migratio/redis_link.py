"""The daemon's connection to Redis, shared by intake and feedback, and its outages.

Redis may be down when the daemon starts or go away while it runs; migrations
go on regardless. Callers report each failed and each successful Redis call
here: an outage is logged once when it begins and once when it ends (not on
every retry), and callers wait ``backoff()`` seconds between attempts.
redis-py's own retries are off, so a failure reaches the caller at once.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# What a Redis call raises when the server is unreachable, restarting or slow.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    OSError,
)


def redacted(url: str) -> str:
    """The URL without a password, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """A Redis client plus the outage state of the server behind it.

    ``read_timeout`` (every read and write) must exceed the longest blocking
    command (BLMOVE) callers send; ``connect_timeout`` bounds connecting.
    Backoff: exponential with jitter from 0.2 s up to ``max_backoff`` s.
    """

    def __init__(
        self,
        url: str,
        *,
        read_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=read_timeout,
            retry=Retry(ExponentialWithJitterBackoff(), 0),
            health_check_interval=30,
        )
        self._backoff = ExponentialWithJitterBackoff(base=0.2, cap=max_backoff)
        self._lock = threading.Lock()
        self._failures = 0
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, error: BaseException) -> float:
        """Note a failed call; return how long the caller should wait before the next."""
        with self._lock:
            self._failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "redis at %s unreachable (%s); migrations go on, "
                    "intake and feedback retry with backoff",
                    redacted(self.url),
                    " ".join(str(error).split()) or type(error).__name__,
                )
            # Full jitter can draw ~0: never spin on a refused connection.
            return max(0.1, float(self._backoff.compute(self._failures)))

    def succeeded(self) -> None:
        """Note a successful call: ends an outage if there was one."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            log.warning(
                "redis at %s reachable again after %.1f s",
                redacted(self.url),
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._failures = 0

    def close(self) -> None:
        self.client.close()
