"""Gauges read from the ledger when Prometheus scrapes: migrations by state and
pair of sites, and the feedback outbox backlog.

They describe the ledger, not this daemon, and carry no label naming it: every
daemon on a shared PostgreSQL ledger reports the same values. Scrape one of
them for these, or take ``max()`` across targets; never ``sum()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from migratio.errors import LedgerError
from migratio.ledger.census import Census
from migratio.machine import State

# Scrapes within this many seconds share one census: several Prometheus servers
# (or a dashboard refreshing fast) cost the ledger two count queries per period.
CACHE_SECONDS = 5.0


class LedgerCollector(Collector):
    """Yields the ledger's gauges from ``census`` (``Ledger.census``), cached
    ``cache_seconds``. A ledger that cannot be read yields none of them (the
    scrape still succeeds, and ``migratio_ledger_errors_total`` counts it)."""

    def __init__(
        self,
        census: Callable[[], Census],
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._census = census
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()  # the endpoint serves scrapes in threads
        self._taken: tuple[float, Census] | None = None

    def describe(self) -> Iterator[Metric]:
        # Registering must not query the ledger: the same families, without samples.
        yield from _families(Census())

    def collect(self) -> Iterator[Metric]:
        census = self._current()
        if census is not None:
            yield from _families(census)

    def _current(self) -> Census | None:
        with self._lock:
            now = self._clock()
            if self._taken is not None and now - self._taken[0] < self._cache_seconds:
                return self._taken[1]
            try:
                census = self._census()
            except LedgerError:
                self._taken = None
                return None
            self._taken = (now, census)
            return census


def _families(census: Census) -> Iterator[Metric]:
    migrations = GaugeMetricFamily(
        "migratio_migrations",
        "Migrations in the ledger by state and pair of sites (the same on every daemon "
        "of a shared ledger)",
        labels=["state", "source_site", "dest_site"],
    )
    # Every state of every pair the ledger knows, 0 included: a state that empties
    # shows 0 rather than vanishing, so alerts and graphs see it go down.
    pairs = sorted({(source, dest) for _, source, dest in census.migrations})
    for source, dest in pairs:
        for state in State:
            count = census.migrations.get((state.value, source, dest), 0)
            migrations.add_metric([state.value, source, dest], count)
    yield migrations
    yield GaugeMetricFamily(
        "migratio_feedback_backlog",
        "Feedback jobs in the ledger's outbox not yet delivered to Redis (the same on "
        "every daemon of a shared ledger)",
        value=census.feedback_backlog,
    )
