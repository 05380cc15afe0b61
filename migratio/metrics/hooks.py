"""The hooks the engine calls where things happen, for the Prometheus metrics of ``migratio run``.

Each hook is one line at the place it measures (a transition committed, payload
bytes handed to a destination, a retry scheduled, a lease taken over, jobs
recorded, a ledger request failed). Until ``start`` installs a recorder (the
daemon with ``metrics_listen`` set) they do nothing, so the CLI and the tests
pay one attribute check and never import ``prometheus_client``. A hook never
raises: a fault in metrics must not fail a migration.

What the metrics mean and how to add them up across daemons: docs/operations.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from migratio.errors import (
    ConfigError,
    JobConflict,
    LedgerError,
    LedgerUnavailable,
    PermanentError,
    TransientError,
)

if TYPE_CHECKING:
    from migratio.config import Settings
    from migratio.ledger.store import JobRecorded, Ledger, Migration
    from migratio.metrics.endpoint import Endpoint
    from migratio.metrics.recorder import Recorder

log = logging.getLogger(__name__)

_recorder: Recorder | None = None
_endpoint: Endpoint | None = None
_complained: set[str] = set()


def start(settings: Settings, ledger: Ledger) -> None:
    """Serve ``/metrics`` on ``metrics_listen`` if it is set (ConfigError if it cannot listen)."""
    global _recorder, _endpoint
    listen = settings.daemon.metrics_listen
    if listen is None:
        return
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from migratio.metrics.endpoint import Endpoint
    from migratio.metrics.recorder import Recorder

    # A ``_created`` twin of every counter doubles the scrape and no query of ours
    # needs it (this process owns the client library: the switch is process-wide).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    recorder = Recorder(CollectorRegistry(auto_describe=True), ledger)
    _endpoint = Endpoint.open(listen, recorder.registry, str(settings.path))
    _recorder = recorder
    log.info("metrics: serving /metrics on %s", listen)


def stop() -> None:
    """Stop serving and recording (the daemon is stopping)."""
    global _recorder, _endpoint
    endpoint, _endpoint, _recorder = _endpoint, None, None
    if endpoint is not None:
        endpoint.close()


def install(recorder: Recorder | None) -> Recorder | None:
    """Record into ``recorder`` from now on (None: stop recording); the previous one.
    For tests, which give each recorder a registry of its own."""
    global _recorder
    previous, _recorder = _recorder, recorder
    return previous


# ---- the hooks ----------------------------------------------------------------


def transition(before: Migration, after: Migration) -> None:
    """The supervisor committed ``before.state -> after.state``."""
    _call("transition", before, after)


def retry(cause: BaseException) -> None:
    """A failed attempt was scheduled again."""
    _call("retry", error_class(cause))


def failure(cause: BaseException) -> None:
    """A migration failed for good because of ``cause``."""
    _call("failure", error_class(cause))


def lease_taken_over() -> None:
    """This daemon claimed a migration whose previous holder let its lease expire."""
    _call("lease_taken_over")


def throttled(cap: str, seconds: float) -> None:
    """A transfer waited ``seconds`` for the bandwidth cap ``cap`` (a site id, or "daemon")."""
    _call("throttled", cap, seconds)


def intake_jobs(recorded: Sequence[JobRecorded], dead: int) -> None:
    """An intake round: jobs recorded in the ledger (by outcome), jobs dead-lettered."""
    _call("intake_jobs", [result.outcome.value for result in recorded], dead)


def ledger_error(error: LedgerError) -> None:
    """A ledger request failed (the typed error it raises)."""
    _call("ledger_error", ledger_error_kind(error))


class PayloadMeter:
    """Payload bytes one upload attempt hands to its destination, counted once.

    Drivers that take the stream (``Transfer.chunks``: Glance, SSH) are counted
    chunk by chunk; drivers that read the staged file themselves (AWS) by the
    advance of the position they report. A driver doing both (SSH reports the
    position of the stream it reads) is not counted twice: only a position past
    the furthest seen counts. A stream starting at ``offset`` (a resumed upload)
    counts from there: what an earlier attempt sent was counted by that attempt.
    """

    def __init__(self, migration: Migration) -> None:
        self._sites = (migration.source_site, migration.dest_site)
        self._furthest: int | None = None

    def stream(self, chunks: Iterator[bytes], offset: int) -> Iterator[bytes]:
        """Pass ``chunks`` through, counting each once the destination took it."""
        self._furthest = offset
        position = offset
        for chunk in chunks:
            yield chunk
            position += len(chunk)
            self.reached(position)

    def reached(self, position: int) -> None:
        """The destination holds the payload up to ``position`` (a driver's progress)."""
        if self._furthest is None:
            # A driver's first report: where this attempt starts, not what it sent.
            self._furthest = position
        elif position > self._furthest:
            sent, self._furthest = position - self._furthest, position
            _call("bytes_sent", self._sites, sent)


# ---- classification -------------------------------------------------------------


def error_class(cause: BaseException) -> str:
    """``transient``, ``permanent``, ``ledger`` or ``unexpected``: as the supervisor decides."""
    if isinstance(cause, TransientError):
        return "transient"
    if isinstance(cause, PermanentError | ConfigError):
        return "permanent"
    if isinstance(cause, LedgerError):
        return "ledger"
    return "unexpected"


def ledger_error_kind(error: LedgerError) -> str:
    """``unavailable`` (cannot reach it), ``conflict`` (a concurrent writer won) or ``error``."""
    if isinstance(error, LedgerUnavailable):
        return "unavailable"
    if isinstance(error, JobConflict):
        return "conflict"
    return "error"


def _call(name: str, *args: Any) -> None:
    recorder = _recorder
    if recorder is None:
        return
    try:
        method: Callable[..., None] = getattr(recorder, name)
        method(*args)
    except Exception:
        # Once per hook: a broken metric must neither fail the engine nor flood the log.
        if name not in _complained:
            _complained.add(name)
            log.warning("metrics: %s failed; not counted", name, exc_info=True)
