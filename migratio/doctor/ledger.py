"""The ledger: reachable, and its schema one this migratio can use. Read-only:
doctor never creates a ledger nor upgrades its schema (``migratio run`` and
``migratio db upgrade`` do)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from migratio.doctor.result import Check, Verdict, fail, ok, warn
from migratio.errors import LedgerUnavailable

if TYPE_CHECKING:
    from migratio.config import DaemonConfig
    from migratio.doctor.runner import Chain

# A SQLite ledger the daemon is writing is read between its transactions;
# waiting longer only delays the report.
BUSY_TIMEOUT = 5.0


def chain(daemon: DaemonConfig) -> Chain:
    from migratio.doctor.runner import Chain

    return Chain("ledger", [Check("ledger", lambda: schema(daemon.ledger_url))])


def schema(url: str) -> Verdict:
    from migratio.ledger.database import schema_state
    from migratio.ledger.urls import describe_url

    where = describe_url(url)
    try:
        state = schema_state(url, BUSY_TIMEOUT)
    except LedgerUnavailable as exc:
        return fail(str(exc))
    if state is None:
        return warn(f"no ledger at {where} yet: 'migratio run' or 'migratio db upgrade' creates it")
    if state.is_current:
        return ok(f"{where}: schema at revision {state.current} (current)")
    if not state.known:
        return fail(
            f"{where}: schema at revision {state.current}, which this migratio does not "
            f"know (newest it knows: {state.head}); a newer migratio wrote it"
        )
    return warn(
        f"{where}: schema at revision {state.current or 'none'}, this migratio needs "
        f"{state.head}: 'migratio run' upgrades it at start, or run 'migratio db upgrade'"
    )
