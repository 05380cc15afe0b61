"""Progress lines for the platform while uploading: their text, how far apart they are
(another 10% or 30 s, whichever first; at least 2 s apart; never 100%), and their
place among the other feedback (the ledger's outbox, in the transaction that records
the progress)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from migratio import sidekiq
from migratio.feedback.messages import upload_progress_text
from migratio.feedback.outbox import status_job
from migratio.feedback.progress import ProgressPacer
from migratio.ledger.store import Ledger, Migration
from migratio.step import Signals, Step
from tests.support.ledgers import fresh_sqlite_ledger, sqlite_engine

MIB = 1024 * 1024
GIB = 1024 * MIB
CHUNK = 8 * MIB
BLOCK = bytes(CHUNK)
LINE = re.compile(
    r"Uploading image to site-b: (\d{1,2})% \((\d+(?:\.\d)?) of (\d+(?:\.\d)?) (GiB|MiB|KiB|B), "
    r"(\d+(?:\.\d)?) (GiB|MiB|KiB|B)/s\)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    engine = sqlite_engine(fresh_sqlite_ledger(tmp_path, tmp_path_factory.getbasetemp()))
    return Ledger(engine, on_change=status_job)


def in_state(ledger: Ledger, triggers: Sequence[str], total: int) -> Migration:
    migration = ledger.create("site-a", "site-b", "img-1")
    assert ledger.claim("d1", 30) is not None
    for trigger in triggers:
        ledger.transition(migration.id, "d1", trigger, trigger)
    ledger.record(migration.id, "d1", bytes_total=total)
    return ledger.get(migration.id)


def step(ledger: Ledger, migration: Migration, clock: Clock, tmp_path: Path) -> Step:
    return Step(
        migration,
        ledger=ledger,
        owner="d1",
        source=cast(Any, None),
        destination=cast(Any, None),
        work_dir=tmp_path,
        signals=Signals(),
        clock=clock,
    )


def texts(ledger: Ledger) -> list[str]:
    sent: list[str] = []

    def send(jobs: Sequence[sidekiq.Job]) -> None:
        sent.extend(str(job.args[3]) for job in jobs)

    while ledger.outbox.deliver(send, 100):
        pass
    return sent


def test_the_line_reads_like_the_platform_shows_it() -> None:
    assert (
        upload_progress_text("site-b", int(0.45 * 2.7 * GIB) + 1, int(2.7 * GIB), 180 * MIB)
        == "Uploading image to site-b: 45% (1.2 of 2.7 GiB, 180 MiB/s)"
    )
    assert (
        upload_progress_text("site-b", 120 * MIB, 400 * MIB, 1.6 * MIB)
        == "Uploading image to site-b: 30% (120 of 400 MiB, 1 MiB/s)"
    )
    assert (
        upload_progress_text("aws-a", 3 * GIB, None, 700 * 1024)
        == "Uploading image to aws-a: 3.0 GiB (700 KiB/s)"
    )
    # Rounded down: 100% only when it is.
    assert upload_progress_text("x", 999, 1000, 0).startswith("Uploading image to x: 99% (")


def test_lines_come_every_10_percent_or_after_30_quiet_seconds_never_at_100(
    ledger: Ledger, tmp_path: Path
) -> None:
    total = 100 * CHUNK
    clock = Clock()
    migration = in_state(ledger, ["start", "exported", "converted"], total)
    running = step(ledger, migration, clock, tmp_path)
    # 4 chunks a second (32 MiB/s), but chunks 51 to 62 take 5 s each (1.6 MiB/s).
    emitted: list[tuple[float, str]] = []
    before = len(texts(ledger))
    chunks = running.tracked(BLOCK for _ in range(100))
    for n, _ in enumerate(chunks, start=1):
        # The line (if any) was written at the reading that let this chunk through.
        emitted += [(clock.now, text) for text in texts(ledger)]
        clock.now += 5.0 if 50 < n <= 62 else 1 / 4
    emitted += [(clock.now, text) for text in texts(ledger)]
    assert before == 4  # started, reading, checked, uploading

    lines = [text for _, text in emitted]
    assert lines == [
        f"Uploading image to site-b: {percent}% ({percent * 8} of 800 MiB, {speed} MiB/s)"
        for percent, speed in [
            (10, 32),
            (20, 32),
            (30, 32),
            (40, 32),
            (50, 32),
            (56, 1),  # 30 s after the last line, though not 10% further
            (62, 1),
            (72, 32),
            (82, 32),
            (92, 32),
        ]
    ]
    # The spacing rule, stated as the platform sees it.
    readings = [(at, int(LINE.fullmatch(text)[1])) for at, text in emitted]  # type: ignore[index]
    for (at, percent), (next_at, next_percent) in itertools.pairwise(readings):
        assert next_percent - percent >= 10 or next_at - at >= 30
        assert next_at - at >= 2
    assert ledger.get(running.migration.id).bytes_done == total


def test_progress_lines_sit_in_order_between_the_state_lines(
    ledger: Ledger, tmp_path: Path
) -> None:
    clock = Clock()
    migration = in_state(ledger, ["start", "exported", "converted"], 4 * CHUNK)
    running = step(ledger, migration, clock, tmp_path)
    for _ in running.tracked(BLOCK for _ in range(4)):
        clock.now += 2
    ledger.transition(migration.id, "d1", "uploaded", "uploaded")
    assert texts(ledger) == [
        "Migration started",
        "Reading image img-1 at site-a",
        "Image checked; preparing it for site-b",
        "Uploading image to site-b",
        "Uploading image to site-b: 25% (8 of 32 MiB, 4 MiB/s)",
        "Uploading image to site-b: 50% (16 of 32 MiB, 4 MiB/s)",
        "Uploading image to site-b: 75% (24 of 32 MiB, 4 MiB/s)",
        "Registering image at site-b",
    ]


def test_no_progress_lines_outside_uploading_nor_with_feedback_off(
    ledger: Ledger, tmp_path: Path
) -> None:
    clock = Clock()
    exporting = step(ledger, in_state(ledger, ["start"], 10 * CHUNK), clock, tmp_path)
    before = texts(ledger)
    for _ in exporting.tracked(BLOCK for _ in range(10)):
        clock.now += 60
    assert texts(ledger) == []
    assert before[-1] == "Reading image img-1 at site-a"

    quiet = Ledger(ledger.engine)  # feedback off: no outbox rows at all
    migration = in_state(quiet, ["start", "exported", "converted"], 10 * CHUNK)
    for _ in step(quiet, migration, clock, tmp_path).tracked(BLOCK for _ in range(10)):
        clock.now += 60
    assert texts(ledger) == [] and quiet.get(migration.id).bytes_done == 10 * CHUNK


def test_a_small_quick_upload_reports_only_its_state_changes() -> None:
    pacer = ProgressPacer()
    assert pacer.due(0, 4 * MIB, 0.0) is None
    assert [pacer.due(n * MIB, 4 * MIB, n / 10) for n in range(1, 5)] == [None] * 4


def test_a_resumed_upload_counts_from_where_it_resumed() -> None:
    pacer = ProgressPacer()
    assert pacer.due(50 * MIB, 100 * MIB, 0.0) is None  # the baseline
    assert pacer.due(59 * MIB, 100 * MIB, 1.0) is None
    assert pacer.due(60 * MIB, 100 * MIB, 2.0) == 5 * MIB
    assert pacer.due(60 * MIB, 100 * MIB, 31.0) is None
    assert pacer.due(60 * MIB, 100 * MIB, 32.0) == 0.0  # stalled: a sign of life
    assert pacer.due(100 * MIB, 100 * MIB, 99.0) is None
    unknown = ProgressPacer()
    assert unknown.due(0, None, 0.0) is None
    assert unknown.due(GIB, None, 29.0) is None
    assert unknown.due(GIB, None, 30.0) == GIB / 30
