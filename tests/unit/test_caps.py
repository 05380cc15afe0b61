"""Bandwidth caps and per-site concurrency: the token bucket's bound, schedules,
the claim that keeps ``max_concurrent``, and the engine keeping both."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from migratio import config, metrics, reports
from migratio.bandwidth import Bandwidth
from migratio.cap_schedule import MIB, Cap, CapSchedule, bytes_per_second
from migratio.errors import ConfigError
from migratio.ledger import slots as slots_module
from migratio.ledger.listing import Listing
from migratio.ledger.models import TransitionRow
from migratio.ledger.slots import WAITING_NOTE
from migratio.ledger.store import Ledger, Migration
from migratio.machine import TERMINAL, Trigger
from migratio.metrics.recorder import Recorder
from tests.support.engine import KIB, EngineBed, payload


class FakeTime:
    """A monotonic clock that only moves when a sender sleeps (or the test says)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def _bandwidth(caps: dict[str | None, Cap], clock: FakeTime, **kwargs: object) -> Bandwidth:
    return Bandwidth(lambda site: caps.get(site), clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


# ---- the token bucket -----------------------------------------------------------


def test_no_window_carries_more_than_a_quarter_second_of_burst_over_the_cap() -> None:
    clock = FakeTime()
    rate = 8 * MIB
    bandwidth = _bandwidth({"site-b": 8.0}, clock)
    sent: list[tuple[float, int]] = []  # (time the bytes left, bytes)
    chunks = [bytes(size) for size in (64 * KIB, 1 * MIB, 3 * MIB, 200 * KIB)] * 8
    for index, chunk in enumerate(chunks):
        if index % 5 == 0:
            clock.now += 0.4  # the sender was busy: the bucket fills up to its burst
        for piece in bandwidth.paced([chunk], ["site-b"]):
            sent.append((clock.now, len(piece)))
    # Every piece is at most a burst, and over every interval the bytes that left
    # are at most a quarter second's worth beyond the cap.
    assert max(size for _, size in sent) <= rate / 4
    for i, (start, _) in enumerate(sent):
        total = 0
        for at, size in sent[i:]:
            total += size
            assert total <= rate * (at - start) + rate / 4 + 1, (start, at, total)
    # The senders waited no longer than the cap needs: each idle pause banked at
    # most a burst (7 pauses, and the burst the bucket starts with).
    moved = sum(size for _, size in sent)
    assert moved / rate - 8 * 0.25 <= clock.slept <= moved / rate


def test_a_chunk_moved_between_two_capped_sites_waits_for_the_slower_cap_not_both() -> None:
    clock = FakeTime()
    bandwidth = _bandwidth({"site-a": 10.0, "site-b": 5.0, None: 20.0}, clock)
    data = bytes(10 * MIB)
    recorder = Recorder(CollectorRegistry())
    previous = metrics.install(recorder)
    try:
        moved = b"".join(bandwidth.paced([data], ["site-a", "site-b"]))
    finally:
        metrics.install(previous)
    assert moved == data
    # 10 MiB at 5 MiB/s, less the first burst (1.25 MiB): 1.75 s, not 1.75 + 0.75 + 0.375.
    assert clock.slept == pytest.approx(1.75, abs=0.01)
    # The metric names the cap that held the transfer back, for all of that time.
    waited = {
        sample.labels["cap"]: sample.value
        for family in text_string_to_metric_families(generate_latest(recorder.registry).decode())
        for sample in family.samples
        if sample.name == "migratio_throttled_seconds_total"
    }
    assert waited == {"site-b": pytest.approx(1.75, abs=0.01)}


def test_sites_without_a_cap_are_not_paced_and_the_daemon_cap_counts_every_site() -> None:
    clock = FakeTime()
    caps: dict[str | None, Cap] = {}
    bandwidth = _bandwidth(caps, clock)
    data = bytes(4 * MIB)
    assert list(bandwidth.paced([data], ["site-a"])) == [data]  # untouched, no copy
    assert clock.slept == 0
    caps[None] = 2.0  # the daemon's
    bandwidth.pace(4 * MIB, ["site-a"])
    bandwidth.pace(4 * MIB, ["site-c"])
    assert clock.slept == pytest.approx(8 / 2 - 0.25, abs=0.01)  # less its first burst


def test_a_scheduled_cap_applies_to_a_running_transfer_when_its_window_opens() -> None:
    schedule = CapSchedule.model_validate(
        {
            "timezone": "Europe/Warsaw",
            "windows": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "hours": "08:00-18:00",
                    "mib_per_s": 4,
                }
            ],
        }
    )
    clock = FakeTime()
    wall = [datetime(2026, 12, 7, 6, 59, tzinfo=UTC)]  # Monday 07:59 in Warsaw: no cap yet
    bandwidth = _bandwidth({"site-b": schedule}, clock, now=lambda: wall[0])
    bandwidth.pace(64 * MIB, ["site-b"])
    assert clock.slept == 0
    wall[0] = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # 08:00 in Warsaw: 4 MiB/s
    for _ in range(8):
        bandwidth.pace(1 * MIB, ["site-b"])
    assert clock.slept == pytest.approx(8 / 4 - 0.25, abs=0.01)


# ---- schedules and their configuration ---------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-12-07T09:00", 50.0),  # Monday, working hours
        ("2026-12-07T18:00", None),  # Monday evening: no cap (the default)
        ("2026-12-12T09:00", None),  # Saturday
        ("2026-12-11T23:30", 5.0),  # Friday night window, before midnight
        ("2026-12-12T05:59", 5.0),  # ... and after it, on Saturday morning
        ("2026-12-13T05:00", None),  # Sunday morning: Saturday has no night window
    ],
)
def test_a_weekly_schedule_gives_the_cap_of_the_first_window_holding_the_moment(
    moment: str, expected: float | None
) -> None:
    schedule = CapSchedule.model_validate(
        {
            "windows": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "hours": "08:00-18:00",
                    "mib_per_s": 50,
                },
                {"days": ["fri"], "hours": "22:00-06:00", "mib_per_s": 5},
            ]
        }
    )
    now = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    assert schedule.mib_per_s(now) == expected
    assert bytes_per_second(schedule, now) == (None if expected is None else expected * MIB)


def test_site_files_take_caps_and_refuse_bad_ones_naming_the_key(tmp_path: Path) -> None:
    good = tmp_path / "site-b.yml"
    good.write_text(
        "type: openstack\ncloud: b\nmax_concurrent: 2\nmax_mib_per_s:\n"
        "  default: 100\n  windows:\n    - {hours: '08:00-18:00', mib_per_s: 50}\n"
    )
    site = config.load_site(good)
    assert site.settings.max_concurrent == 2
    assert isinstance(site.settings.max_mib_per_s, CapSchedule)
    plain = tmp_path / "aws-a.yml"
    plain.write_text("type: aws\nregion: eu-west-1\nmax_mib_per_s: 40\n")
    assert config.load_site(plain).settings.max_mib_per_s == 40.0
    for bad, key in [
        ("max_mib_per_s: 0", "max_mib_per_s"),
        ("max_concurrent: 0", "max_concurrent"),
        ("max_mib_per_s: {windows: [{hours: '8-18', mib_per_s: 5}]}", "max_mib_per_s"),
        ("max_mib_per_s: {timezone: Mars/Olympus, windows: [{mib_per_s: 5}]}", "max_mib_per_s"),
    ]:
        broken = tmp_path / "site-x.yml"
        broken.write_text(f"type: openstack\ncloud: x\n{bad}\n")
        with pytest.raises(ConfigError) as refused:
            config.load_site(broken)
        assert refused.value.key.startswith(key), (bad, refused.value.key)


# ---- max_concurrent in the claim ---------------------------------------------------------


def test_the_claim_starts_no_queued_migration_to_a_full_site_and_says_why_once(
    ledger: Ledger,
) -> None:
    slots = {"site-b": 1}
    first, second, third = (ledger.create("site-a", "site-b", f"img-{n}") for n in range(3))
    other = ledger.create("site-a", "site-c", "img-other")
    claimed = ledger.claim("daemon-1", 30, slots=slots)
    assert claimed is not None and claimed.id == first.id
    # Another daemon: site-b is full, so the migration to site-c is its only choice.
    assert _claimed(ledger.claim("daemon-2", 30, slots=slots)) == other.id
    for _ in range(3):
        assert ledger.claim("daemon-2", 30, slots=slots) is None
    for waiting in (second, third):
        notes = [
            t.message for t in ledger.history(waiting.id) if t.message.startswith(WAITING_NOTE)
        ]
        assert notes == [f"{WAITING_NOTE}: 1 of max_concurrent 1 migrations to site-b running"]
        assert ledger.get(waiting.id).state == "queued"
    # The slot stays taken while the first runs (even between its attempts) ...
    ledger.transition(first.id, "daemon-1", Trigger.START, "started")
    ledger.schedule_retry(first.id, "daemon-1", 1, 0, "a transient error")
    assert ledger.claim("daemon-2", 30, skip=[first.id], slots=slots) is None
    # ... and is free once it ends: the oldest waiting one goes next.
    _end(ledger, first.id)
    assert _claimed(ledger.claim("daemon-2", 30, slots=slots)) == second.id
    # A cancel request still reaches a held-back migration.
    ledger.request_cancel(third.id)
    assert _claimed(ledger.claim("daemon-2", 30, slots=slots)) == third.id


def test_every_held_back_migration_gets_its_note_however_many_wait(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slots_module, "NOTES_PER_CLAIM", 2)
    slots = {"site-b": 1}
    created = [ledger.create("site-a", "site-b", f"img-{n}") for n in range(6)]
    assert _claimed(ledger.claim("daemon-1", 30, slots=slots)) == created[0].id
    for _ in range(4):
        assert ledger.claim("daemon-2", 30, slots=slots) is None
    for waiting in created[1:]:
        notes = [m for m in (t.message for t in ledger.history(waiting.id)) if WAITING_NOTE in m]
        assert len(notes) == 1, waiting.id


def test_status_says_a_queued_migration_waits_for_a_slot(ledger: Ledger) -> None:
    slots = {"site-b": 1}
    running, waiting = (ledger.create("site-a", "site-b", f"img-{n}") for n in range(2))
    elsewhere = ledger.create("site-a", "site-c", "img-c")
    listing = Listing.open(ledger.engine.url.render_as_string(hide_password=False))
    assert ledger.full_sites(slots) == listing.full_sites(slots) == {}
    assert _claimed(ledger.claim("daemon-1", 30, slots=slots)) == running.id
    full = ledger.full_sites(slots)
    assert full == listing.full_sites(slots) == {"site-b": 1}  # status reads it so
    listing.close()
    rows = {m.id: reports.summary(m, full=full) for m in ledger.migrations()}
    assert rows[running.id]["activity"] == "running"
    assert rows[waiting.id]["activity"] == "waiting for a slot"
    assert rows[elsewhere.id]["activity"] == "queued"


def test_daemons_claiming_at_the_same_moment_start_one_migration_to_a_one_slot_site(
    ledger: Ledger,
) -> None:
    slots = {"site-b": 1}
    for n in range(4):
        ledger.create("site-a", "site-b", f"img-{n}")
    start = threading.Barrier(6)

    def claim(owner: str) -> Migration | None:
        start.wait()
        return ledger.claim(owner, 30, slots=slots)

    with ThreadPoolExecutor(6) as pool:
        claimed = [m for m in pool.map(claim, [f"daemon-{n}" for n in range(6)]) if m]
    assert len(claimed) == 1


def _claimed(migration: Migration | None) -> str | None:
    return None if migration is None else migration.id


def _end(ledger: Ledger, migration_id: str) -> None:
    owner = "janitor"
    assert ledger.acquire(migration_id, owner, 30)
    ledger.transition(migration_id, owner, Trigger.FAIL, "ended for the test")


def test_max_concurrent_one_runs_three_migrations_one_after_another(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.configure(concurrency=3)
    limited = bed.settings.sites["site-b"].settings.model_copy(update={"max_concurrent": 1})
    bed.settings.sites["site-b"] = config.Site(id="site-b", settings=limited)
    # Slow enough that three workers would overlap without the limit.
    bed.destination.on_call("receive", lambda: time.sleep(0.05), times=None)
    ids = [bed.submit(bed.source.add_image(payload(64 * KIB, n)).id).id for n in range(3)]

    bed.run()

    assert [bed.ledger.get(i).state for i in ids] == ["done"] * 3
    # From the audit rows, in commit order: a migration runs from the row that
    # takes it out of queued to the row that ends it; never two at once.
    with bed.ledger.engine.connect() as connection:
        rows = connection.execute(
            select(TransitionRow.from_state, TransitionRow.to_state)
            .where(TransitionRow.migration_id.in_(ids))
            .order_by(TransitionRow.id)
        ).all()
    running, most = 0, 0
    for from_state, to_state in rows:
        if from_state == "queued" and to_state != "queued":
            running += 1
        elif to_state in {s.value for s in TERMINAL}:
            running -= 1
        most = max(most, running)
    assert most == 1
    waited = [i for i in ids if any(m.startswith(WAITING_NOTE) for m in bed.messages(i))]
    assert len(waited) >= 2  # the two that waited said why, in queued


@pytest.mark.parametrize("staged", [False, True], ids=["streamed", "staged"])
def test_a_migration_moves_its_bytes_within_the_caps_of_its_sites_and_the_daemon(
    engine_bed: EngineBed, staged: bool
) -> None:
    bed = engine_bed
    # Streamed: the upload counts against site-b's cap. Staged (the destination
    # reads a file): the download into the work dir counts against the daemon's.
    bed.destination.wants_file = staged
    site_b = bed.settings.sites["site-b"].settings
    if staged:
        bed.configure(max_mib_per_s=0.25)
    else:
        limited = site_b.model_copy(update={"max_mib_per_s": 0.25})
        bed.settings.sites["site-b"] = config.Site(id="site-b", settings=limited)
    data = payload(512 * KIB)
    migration_id = bed.submit(bed.source.add_image(data).id).id
    supervisor = bed.supervisor()
    clock = FakeTime()
    supervisor.bandwidth = Bandwidth(bed.settings.cap, clock=clock, sleep=clock.sleep)

    bed.run(supervisor)

    migration = bed.ledger.get(migration_id)
    assert migration.state == "done", migration.last_error
    [record] = bed.records_of(migration_id)
    assert bytes(bed.destination.records[record].data) == data
    # 512 KiB at 256 KiB/s, less the first burst (a quarter second's worth).
    assert clock.slept == pytest.approx(2 - 0.25, abs=0.01)
