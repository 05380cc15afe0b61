"""The metrics one daemon records, in a registry of its own.

Counters and the histogram count what happened in this process: they carry no
label naming the daemon (Prometheus adds ``instance`` per scrape target), so
``sum()`` across targets gives the total of all daemons. What lives in the
ledger (migrations by state, the feedback backlog) is read from it at scrape
time by ``LedgerCollector`` instead, so daemons sharing a PostgreSQL ledger all
report the same numbers rather than each its share.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from migratio import __version__
from migratio.ledger.store import Ledger, Migration
from migratio.metrics.collector import LedgerCollector

# Seconds in a state: from a no-op (converting an image that needs no conversion)
# to a multi-hour upload of a large image over a slow link, or a long retry wait.
STATE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
ERROR_CLASSES = ("transient", "permanent", "ledger", "unexpected")
INTAKE_OUTCOMES = ("created", "joined", "duplicate", "dead")
LEDGER_ERROR_KINDS = ("unavailable", "conflict", "error")
# The ledger says "attached"; operators read "joined" in the README and the audit trail.
OUTCOME_NAMES = {"attached": "joined"}
LIBRARIES = ("sqlalchemy", "openstacksdk", "boto3")


class Recorder:
    """migratio's metrics in ``registry``; with ``ledger``, the ledger's gauges too."""

    def __init__(self, registry: CollectorRegistry, ledger: Ledger | None = None) -> None:
        self.registry = registry
        self._ledger = ledger
        self.transitions = Counter(
            "migratio_transitions",
            "State changes committed by this daemon",
            ["from_state", "to_state"],
            registry=registry,
        )
        self.state_seconds = Histogram(
            "migratio_state_seconds",
            "Seconds a migration spent in a state, observed when it left it "
            "(from the ledger's audit trail: includes retry waits and other daemons' time)",
            ["state"],
            buckets=STATE_BUCKETS,
            registry=registry,
        )
        self.payload_bytes = Counter(
            "migratio_bytes_sent",
            "Payload bytes this daemon handed to destinations",
            ["source_site", "dest_site"],
            registry=registry,
        )
        self.retries = Counter(
            "migratio_retries",
            "Failed attempts scheduled again, by error class",
            ["error_class"],
            registry=registry,
        )
        self.failures = Counter(
            "migratio_failures",
            "Migrations failed for good, by error class",
            ["error_class"],
            registry=registry,
        )
        self.throttle_seconds = Counter(
            "migratio_throttled_seconds",
            "Seconds transfers waited for a bandwidth cap, by the cap that held them",
            ["cap"],
            registry=registry,
        )
        self.lease_takeovers = Counter(
            "migratio_lease_takeovers",
            "Migrations this daemon took over after their holder's lease expired",
            registry=registry,
        )
        self.intake = Counter(
            "migratio_intake_jobs",
            "Jobs taken from the Redis queue, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.ledger_errors = Counter(
            "migratio_ledger_errors",
            "Ledger requests that failed in this daemon, by kind",
            ["kind"],
            registry=registry,
        )
        Info("migratio_build", "Versions of migratio and what it runs on", registry=registry).info(
            build_info()
        )
        # Every known label value starts at 0, so rate() and alerts see a series at once.
        for error_class in ERROR_CLASSES:
            self.retries.labels(error_class)
            self.failures.labels(error_class)
        for outcome in INTAKE_OUTCOMES:
            self.intake.labels(outcome)
        for kind in LEDGER_ERROR_KINDS:
            self.ledger_errors.labels(kind)
        if ledger is not None:
            registry.register(LedgerCollector(ledger.census))

    # ---- what the hooks in migratio.metrics call ------------------------------

    def transition(self, before: Migration, after: Migration) -> None:
        self.transitions.labels(before.state, after.state).inc()
        if self._ledger is not None and (seconds := self._time_in(before, after)) is not None:
            self.state_seconds.labels(before.state).observe(seconds)

    def retry(self, error_class: str) -> None:
        self.retries.labels(error_class).inc()

    def failure(self, error_class: str) -> None:
        self.failures.labels(error_class).inc()

    def lease_taken_over(self) -> None:
        self.lease_takeovers.inc()

    def throttled(self, cap: str, seconds: float) -> None:
        self.throttle_seconds.labels(cap).inc(seconds)

    def intake_jobs(self, outcomes: Sequence[str], dead: int) -> None:
        for outcome in outcomes:
            self.intake.labels(OUTCOME_NAMES.get(outcome, outcome)).inc()
        if dead:
            self.intake.labels("dead").inc(dead)

    def ledger_error(self, kind: str) -> None:
        self.ledger_errors.labels(kind).inc()

    def bytes_sent(self, sites: tuple[str, str], amount: int) -> None:
        self.payload_bytes.labels(*sites).inc(amount)

    def _time_in(self, before: Migration, after: Migration) -> float | None:
        """Seconds from entering ``before.state`` to the transition just committed, by
        the ledger's clock: right across restarts, take-overs and retry waits."""
        assert self._ledger is not None
        left = entered = None
        for row in reversed(self._ledger.history(after.id)):
            if left is None:
                if row.from_state == before.state and row.to_state == after.state:
                    left = row
            elif row.to_state == before.state and row.from_state != before.state:
                entered = row
                break
        if left is None or entered is None:
            return None
        return max(0.0, (left.at - entered.at).total_seconds())


def build_info() -> dict[str, str]:
    info = {"version": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = "none"
    return info
