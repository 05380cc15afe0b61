"""Driver transfers under the stall watchdog, as the uploading state runs them,
and how long a stall took to be noticed.

``Watched`` is the caller's side of a transfer (``Payload``) whose progress feeds
a ``Watchdog``, as ``Step.checkpoint`` does in the daemon. ``expect_stall`` runs
a transfer through a ``FreezingProxy`` that freezes it, and returns how long
after the last movement (the freeze, or the last byte handed over) the
transfer failed; each result is printed as a ``STALL`` line (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from migratio import stall
from migratio.errors import Stalled, TransientError
from tests.support.freezing_proxy import FreezingProxy
from tests.support.payloads import Payload
from tests.support.reliability import record

STALL_SECONDS = 3.0
# What detection may take beyond stall_seconds: the watchdog's look interval,
# the cut, and the driver's own error handling (letting in-flight requests end).
MARGIN_SECONDS = 3.0


class Watched(Payload):
    """A Payload whose chunks and progress reports feed ``watchdog``."""

    def __init__(self, watchdog: stall.Watchdog, **payload: Any) -> None:
        super().__init__(**payload)
        self.watchdog = watchdog
        self.last_moved = time.monotonic()

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        done = offset
        for chunk in super().chunks(offset):
            self._saw(done)
            yield chunk
            done += len(chunk)
        self._saw(done)

    def progress(self, bytes_done: int) -> None:
        super().progress(bytes_done)
        self._saw(bytes_done)

    def _saw(self, bytes_done: int) -> None:
        self.watchdog.saw(bytes_done)
        self.last_moved = time.monotonic()


@dataclass(frozen=True)
class Detected:
    peer: str
    seconds: float  # from the last movement to the error leaving the watched block
    error: Stalled


def expect_stall(
    peer: str,
    proxy: FreezingProxy,
    watchdog: stall.Watchdog,
    run: Callable[[], object],
    last_moved: Callable[[], float],
    margin: float = MARGIN_SECONDS,
) -> Detected:
    """Run ``run`` under ``watchdog``; it must end as ``Stalled`` (a transient
    error) within stall_seconds and the margin of the moment nothing moved any more."""
    with pytest.raises(Stalled) as caught, watchdog.watching():
        run()
    ended = time.monotonic()
    assert proxy.frozen_at is not None, "the proxy never froze the transfer"
    quiet_since = max(proxy.frozen_at, last_moved())
    seconds = ended - quiet_since
    print(
        f"\nSTALL {peer}: detected and aborted {seconds:.2f} s after it went quiet "
        f"(stall_seconds {watchdog.seconds:g}): {caught.value}"
    )
    assert isinstance(caught.value, TransientError)
    assert str(caught.value).startswith(f"stalled: no progress for {watchdog.seconds:g} s")
    assert watchdog.seconds <= seconds < watchdog.seconds + margin
    # The test goes on to resume the transfer and check its bytes.
    record(
        "R7",
        peer,
        stall_seconds=watchdog.seconds,
        detected_s=round(seconds, 2),
        outcome="aborted as a transient error, then resumed",
    )
    return Detected(peer, seconds, caught.value)
