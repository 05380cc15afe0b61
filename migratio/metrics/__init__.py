"""Prometheus metrics of ``migratio run``.

The engine calls the hooks (``hooks``, re-exported here) with one line where
things happen; they are inert until the daemon starts metrics. ``recorder``
holds one daemon's metrics in a registry of its own, ``collector`` reads the
ledger's gauges at scrape time, ``endpoint`` serves ``/metrics``. What the
metrics mean and how to add them up across daemons: docs/operations.md.
"""

from migratio.metrics.hooks import (
    PayloadMeter,
    error_class,
    failure,
    install,
    intake_jobs,
    lease_taken_over,
    ledger_error,
    ledger_error_kind,
    retry,
    start,
    stop,
    throttled,
    transition,
)

__all__ = [
    "PayloadMeter",
    "error_class",
    "failure",
    "install",
    "intake_jobs",
    "lease_taken_over",
    "ledger_error",
    "ledger_error_kind",
    "retry",
    "start",
    "stop",
    "throttled",
    "transition",
]
