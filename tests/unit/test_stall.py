"""The stall watchdog: alone, and in the engine on stub sites whose streams stop.

A stub stream stopped by ``stall_at`` stands for a silent peer: it moves nothing
until the site is aborted (its connections cut), then breaks, as a socket read
does once the watchdog shuts the socket down. The real peers (Glance, moto,
sshd behind a freezing proxy) are in tests/drivers/*/test_*_stalls.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from migratio import stall
from migratio.errors import CancelRequested, PermanentError, Stalled
from tests.support.engine import HAPPY_PATH, KIB, EngineBed, payload, sha512

DATA = payload(600 * KIB)


class Site:
    """Something with ``abort()``, as drivers have: counts the calls, and can
    release whatever waits on ``cut``."""

    def __init__(self) -> None:
        self.aborts = 0
        self.cut = threading.Event()

    def abort(self) -> None:
        self.aborts += 1
        self.cut.set()


def test_a_block_without_progress_is_aborted_and_stalled() -> None:
    site = Site()
    watchdog = stall.Watchdog(0.2, "test transfer", [site, object()])
    started = time.monotonic()
    with pytest.raises(Stalled) as caught, watchdog.watching():
        watchdog.saw(10)
        if not site.cut.wait(5):
            raise AssertionError("never aborted")
        raise ConnectionResetError("peer gone")
    took = time.monotonic() - started
    assert 0.2 <= took < 1.2
    assert str(caught.value).startswith("stalled: no progress for 0.2 s; aborted (peer gone")
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert site.aborts >= 1
    assert watchdog.fired_after is not None and watchdog.fired_after >= 0.2


def test_the_abort_is_repeated_until_the_block_returns() -> None:
    """A library that retries on its own opens new connections: they are cut too."""
    site = Site()
    watchdog = stall.Watchdog(0.1, "test transfer", [site])
    with pytest.raises(Stalled), watchdog.watching():
        deadline = time.monotonic() + 5
        while site.aborts < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise OSError("still cut")
    assert site.aborts >= 3


def test_progress_keeps_the_watchdog_quiet() -> None:
    site = Site()
    watchdog = stall.Watchdog(0.15, "test transfer", [site])
    with watchdog.watching():
        for done in range(6):
            watchdog.saw(done * 100)
            time.sleep(0.025)
    assert site.aborts == 0 and watchdog.fired_after is None


def test_the_same_byte_count_again_is_no_progress() -> None:
    """A transfer reporting the same count every second (a checkpoint while parts
    hang) is not moving."""
    site = Site()
    watchdog = stall.Watchdog(0.15, "test transfer", [site])
    with pytest.raises(Stalled), watchdog.watching():
        for _ in range(40):
            watchdog.saw(100)
            if site.cut.wait(0.025):
                raise TimeoutError("cut")
    assert site.aborts >= 1


def test_waiting_on_the_site_is_not_a_stall() -> None:
    site = Site()
    watchdog = stall.Watchdog(0.1, "test transfer", [site])
    with watchdog.watching():
        with stall.waiting():
            time.sleep(0.2)
        watchdog.saw(1)
    assert site.aborts == 0
    with stall.waiting():  # outside any watched block: nothing to suspend
        pass


def test_errors_without_a_stall_and_interruptions_pass_unchanged() -> None:
    site = Site()
    watchdog = stall.Watchdog(0.1, "test transfer", [site])
    with pytest.raises(PermanentError), watchdog.watching():
        raise PermanentError("refused")
    with pytest.raises(CancelRequested), watchdog.watching():
        site.cut.wait(2)
        raise CancelRequested("cancelled by operator")
    assert site.aborts >= 1


def test_a_block_that_ends_well_after_the_abort_stands() -> None:
    """The answer came after all: what the driver returned was checked by it."""
    site = Site()
    watchdog = stall.Watchdog(0.1, "test transfer", [site])
    with watchdog.watching():
        assert site.cut.wait(2)
    assert watchdog.fired_after is not None
    assert not [t for t in threading.enumerate() if t.name == "stall-watchdog"]


# -- the engine -------------------------------------------------------------------


# (stream that stops, the state it stops in): the source while exporting probes
# it (in the step's thread), the source while uploading (in the read-ahead
# thread), the destination while uploading.
STALLS = [("read", "exporting"), ("read", "uploading"), ("receive", "uploading")]


@pytest.mark.parametrize(
    ("stream", "state"), STALLS, ids=["source-probe", "source-upload", "destination"]
)
def test_a_stalled_transfer_is_aborted_retried_and_done(
    engine_bed: EngineBed, stream: str, state: str
) -> None:
    engine_bed.configure(stall_seconds=0.2)
    site = engine_bed.source if stream == "read" else engine_bed.destination
    image = engine_bed.source.add_image(DATA)
    migration_id = engine_bed.submit(image.id).id
    if state == "exporting":
        site.stall_at(stream, 300 * KIB, limit=30)
    else:  # once uploading has begun
        engine_bed.destination.on_call(
            "create_record", lambda: site.stall_at(stream, 300 * KIB, limit=30)
        )
    started = time.monotonic()
    engine_bed.run()
    assert time.monotonic() - started < 10

    done = engine_bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    [(noted_in, message)] = engine_bed.notes(migration_id)
    assert noted_in == state
    assert "stalled: no progress for 0.2 s; aborted" in message
    assert f"stub {stream} stream cut at {300 * KIB}" in message
    assert site.aborts >= 1
    [record] = engine_bed.destination.records.values()
    assert sha512(bytes(record.data)) == sha512(DATA)
    history = [(h.from_state, h.to_state) for h in engine_bed.ledger.history(migration_id)]
    assert [step for step in history if step != (state, state)] == HAPPY_PATH
    assert engine_bed.source.open_streams == 0
    # No reader or watchdog thread of the aborted attempt is left behind.
    leftovers = [t.name for t in threading.enumerate() if t.name in ("prefetch", "stall-watchdog")]
    assert leftovers == []


def test_a_slow_but_moving_transfer_is_not_a_stall(engine_bed: EngineBed) -> None:
    """Each chunk takes a while, but bytes keep moving: never aborted, also while
    the destination takes what the safety guard held back for its verdict."""
    # Chunks 0.05 s apart against 0.5 s: far from a stall even on a busy machine.
    engine_bed.configure(stall_seconds=0.5)
    image = engine_bed.source.add_image(DATA)
    migration = engine_bed.submit(image.id)
    for offset in range(128 * KIB, len(DATA), 128 * KIB):
        engine_bed.destination.at_byte("receive", offset, lambda: time.sleep(0.05))
    engine_bed.run()
    done = engine_bed.ledger.get(migration.id)
    assert done.state == "done" and done.attempt == 0
    assert engine_bed.destination.aborts == 0
