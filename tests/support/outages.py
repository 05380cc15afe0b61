"""A peer of the test bed taken down for a while and brought back, with the clock
the reliability table reads: how long it was down, how long the migration took to
move again once it was back.

The outage lasts ``MIGRATIO_OUTAGE_SECONDS``: 5 s by default (several failed
attempts, and the whole R2/R3 set fits its CI budget), 60 s under ``support/chaos``,
the outage issue 11 asks to survive.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migratio.ledger.store import Ledger

OUTAGE_VARIABLE = "MIGRATIO_OUTAGE_SECONDS"
DEFAULT_OUTAGE = 5.0

# For MIGRATIO_FAULTS: the daemon sleeps 0.05 s at each progress checkpoint past
# 1 MiB (one per MiB streamed, one per 512 KiB EBS block): ~20 MiB/s, slow enough
# that a peer stopped a few MiB in is stopped mid-transfer on any machine.
THROTTLE = "transfer.bytes=pause:0.05@1048576"


def outage_seconds() -> float:
    return float(os.environ.get(OUTAGE_VARIABLE, DEFAULT_OUTAGE))


def outlasting(outage: float) -> dict[str, float]:
    """A retry policy that outlasts ``outage`` whatever the jitter: each wait is 0.5-2 s
    once capped, a refused connection fails at once; 20 attempts to spare."""
    return {"max_attempts": int(outage) + 20, "base_delay": 0.5, "max_delay": 2.0}


@dataclass
class Outage:
    """One peer down for ``seconds``: ``down_for`` and ``returned_at`` once it is back."""

    seconds: float
    down_at: float = 0.0
    returned_at: float = 0.0

    @property
    def down_for(self) -> float:
        return self.returned_at - self.down_at


def take_down(
    stop: Callable[[], object],
    start: Callable[[], object],
    seconds: float,
    *,
    while_down: Callable[[], object] = lambda: None,
) -> Outage:
    """Stop a peer, keep it down ``seconds`` (running ``while_down`` at the start of
    that time), start it again; return once it answers."""
    outage = Outage(seconds)
    stop()
    outage.down_at = time.monotonic()
    while_down()
    time.sleep(max(0.0, seconds - (time.monotonic() - outage.down_at)))
    start()
    outage.returned_at = time.monotonic()
    return outage


def recovery_seconds(
    ledger: Ledger, migration_id: str, returned_at: float, timeout: float = 300
) -> float:
    """Seconds from the peer's return to the migration's next progress: a new state,
    more bytes done than at the previous look, or the end."""
    before = ledger.get(migration_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = ledger.get(migration_id)
        if now.state != before.state or now.bytes_done > before.bytes_done:
            return time.monotonic() - returned_at
        before = now
        time.sleep(0.05)
    raise TimeoutError(f"{migration_id} did not move after the peer came back: {before}")


def still_running(daemon: subprocess.Popen[Any]) -> bool:
    """The daemon we started has not exited (so it was never restarted)."""
    return daemon.poll() is None


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
