"""Prometheus metrics without a network: each test records into a registry of its own
(``Recorder`` over a fresh ``CollectorRegistry``) and reads it back the way Prometheus
would, through the client's own text format and parser.

The engine tests run real supervisors on stub sites (tests/support/engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from migratio import config, metrics, sidekiq
from migratio.errors import (
    ConfigError,
    JobConflict,
    LedgerError,
    LedgerUnavailable,
    PermanentError,
    TransientError,
)
from migratio.ledger.boundary import translated
from migratio.ledger.census import Census
from migratio.ledger.models import TransitionRow
from migratio.ledger.store import JobRequest, Ledger, utcnow
from migratio.machine import State
from migratio.metrics.collector import LedgerCollector
from migratio.metrics.recorder import Recorder
from tests.support.engine import (
    DESTINATION,
    HAPPY_PATH,
    KIB,
    MIB,
    SOURCE,
    EngineBed,
    payload,
)

RAW = payload(300 * KIB, seed=11)
BIG = payload(2 * MIB + 100 * KIB, seed=12)  # past the safety guard's 1 MiB head
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample, as Prometheus would parse the exposition."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def recording(engine_bed: EngineBed) -> Iterator[Recorder]:
    """A recorder with the engine bed's ledger, installed for the test only."""
    recorder = Recorder(CollectorRegistry(), engine_bed.ledger)
    previous = metrics.install(recorder)
    yield recorder
    metrics.install(previous)


def _pairs(states: list[tuple[str | None, str]]) -> list[tuple[str, str]]:
    return [(before, after) for before, after in states if before is not None]


# ---- through the engine ------------------------------------------------------------


def test_a_migration_is_counted_transition_by_transition(
    engine_bed: EngineBed, recording: Recorder
) -> None:
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(RAW).id).id

    bed.run()

    assert bed.ledger.get(migration_id).state == "done"
    samples = scrape(recording.registry)
    for before, after in _pairs(HAPPY_PATH):
        assert value(samples, "migratio_transitions_total", from_state=before, to_state=after) == 1
        # Each state left once: one observation, in seconds by the ledger's clock.
        assert value(samples, "migratio_state_seconds_count", state=before) == 1
        assert value(samples, "migratio_state_seconds_bucket", state=before, le="+Inf") == 1
        assert 0 <= (value(samples, "migratio_state_seconds_sum", state=before) or -1) < 10
    sent = value(samples, "migratio_bytes_sent_total", source_site=SOURCE, dest_site=DESTINATION)
    assert sent == len(RAW)
    assert value(samples, "migratio_migrations", state="done", **_sites()) == 1
    for state in State:
        if state != State.DONE:
            assert value(samples, "migratio_migrations", state=state.value, **_sites()) == 0
    assert value(samples, "migratio_feedback_backlog") == 0
    for error_class in ("transient", "permanent", "ledger", "unexpected"):
        assert value(samples, "migratio_retries_total", error_class=error_class) == 0
        assert value(samples, "migratio_failures_total", error_class=error_class) == 0


def test_time_in_a_state_is_measured_from_the_ledger(
    engine_bed: EngineBed, recording: Recorder
) -> None:
    """Entered an hour ago by the audit trail: an hour, however long this daemon held it."""
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    with bed.ledger.engine.begin() as connection:
        connection.execute(
            update(TransitionRow)
            .where(TransitionRow.migration_id == migration_id)
            .values(at=utcnow() - timedelta(hours=1))
        )

    bed.run()

    samples = scrape(recording.registry)
    waited = value(samples, "migratio_state_seconds_sum", state="queued") or 0
    assert 3600 <= waited < 3610
    assert value(samples, "migratio_state_seconds_bucket", state="queued", le="3600.0") == 0
    assert value(samples, "migratio_state_seconds_bucket", state="queued", le="7200.0") == 1


@pytest.mark.parametrize(
    ("error", "times", "retries", "failures"),
    [
        (TransientError("site-b: HTTP 503"), 2, 2, 0),
        (TransientError("site-b: timed out"), None, 2, 1),  # max_attempts 3: gives up
        (PermanentError("site-b: HTTP 403"), 1, 0, 1),
        (RuntimeError("driver bug"), None, 2, 1),
        (LedgerUnavailable("ledger unavailable: gone", "gone"), 1, 1, 0),
    ],
    ids=["transient", "transient-gives-up", "permanent", "unexpected", "ledger"],
)
def test_retries_and_failures_are_counted_by_error_class(
    engine_bed: EngineBed,
    recording: Recorder,
    error: Exception,
    times: int | None,
    retries: int,
    failures: int,
) -> None:
    bed = engine_bed
    bed.destination.fail("receive", error, times=times)
    migration_id = bed.submit(bed.source.add_image(RAW).id).id

    bed.run()

    kind = metrics.error_class(error)
    samples = scrape(recording.registry)
    assert value(samples, "migratio_retries_total", error_class=kind) == retries
    assert value(samples, "migratio_failures_total", error_class=kind) == failures
    end = bed.ledger.get(migration_id).state
    assert end == ("failed" if failures else "done")
    last = ("uploading", "failed") if failures else ("registering", "done")
    assert value(samples, "migratio_transitions_total", from_state=last[0], to_state=end) == 1


def test_a_take_over_and_a_resumed_upload_count_what_this_daemon_did(
    engine_bed: EngineBed,
) -> None:
    """The killed daemon counted what it sent; the one that took over counts the
    take-over and only the bytes from the resume point on."""
    bed = engine_bed
    bed.destination.resumable = True
    migration_id = bed.submit(bed.source.add_image(BIG).id).id
    first, second = Recorder(CollectorRegistry()), Recorder(CollectorRegistry())
    dead = bed.supervisor_to_kill()
    bed.destination.at_byte("receive", 512 * KIB, bed.crash(dead))
    previous = metrics.install(first)
    try:
        bed.run(dead)
        (record,) = bed.destination.records.values()
        resume_from = len(record.data)
        bed.expire_lease(migration_id)
        metrics.install(second)
        bed.run(bed.supervisor("daemon-2"))
    finally:
        metrics.install(previous)

    assert bed.ledger.get(migration_id).state == "done"
    sites = {"source_site": SOURCE, "dest_site": DESTINATION}
    before, after = scrape(first.registry), scrape(second.registry)
    sent_before = value(before, "migratio_bytes_sent_total", **sites) or 0
    assert 256 * KIB <= sent_before <= resume_from
    assert value(after, "migratio_bytes_sent_total", **sites) == len(BIG) - resume_from
    assert value(before, "migratio_lease_takeovers_total") == 0
    assert value(after, "migratio_lease_takeovers_total") == 1


# ---- the parts -----------------------------------------------------------------------


def test_hooks_do_nothing_and_never_raise_without_a_recorder(engine_bed: EngineBed) -> None:
    previous = metrics.install(None)
    try:
        migration = engine_bed.submit("image-1")
        metrics.transition(migration, migration)
        metrics.retry(TransientError("x"))
        metrics.failure(PermanentError("x"))
        metrics.lease_taken_over()
        metrics.intake_jobs([], dead=3)
        metrics.ledger_error(LedgerError("x"))
        meter = metrics.PayloadMeter(migration)
        assert list(meter.stream(iter([b"ab", b"c"]), 0)) == [b"ab", b"c"]
        meter.reached(10)
    finally:
        metrics.install(previous)


def test_a_fault_in_a_metric_is_logged_once_and_swallowed(
    engine_bed: EngineBed, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Recorder):
        def lease_taken_over(self) -> None:
            raise RuntimeError("broken metric")

    previous = metrics.install(Broken(CollectorRegistry()))
    try:
        metrics.lease_taken_over()
        metrics.lease_taken_over()
    finally:
        metrics.install(previous)
    assert [r.message for r in caplog.records].count(
        "metrics: lease_taken_over failed; not counted"
    ) == 1


def test_the_payload_meter_counts_stream_and_positions_once() -> None:
    recorder = Recorder(CollectorRegistry())
    previous = metrics.install(recorder)
    try:
        ssh_like = metrics.PayloadMeter(_migration())
        assert b"".join(ssh_like.stream(iter([b"x" * 100] * 5), 1000)) == b"x" * 500
        ssh_like.reached(1300)  # the driver's own progress report, behind the stream
        ssh_like.reached(1500)
        aws_like = metrics.PayloadMeter(_migration(dest="aws-a"))
        aws_like.reached(4096)  # a resumed upload's first report: its starting point
        aws_like.reached(6144)
        aws_like.reached(5120)  # positions never count backwards
        aws_like.reached(8192)
    finally:
        metrics.install(previous)
    samples = scrape(recorder.registry)
    assert value(samples, "migratio_bytes_sent_total", **_sites()) == 500
    assert value(samples, "migratio_bytes_sent_total", **_sites(dest="aws-a")) == 4096


def test_intake_outcomes_are_counted(ledger: Ledger) -> None:
    recorder = Recorder(CollectorRegistry())
    first = ledger.accept_jobs([JobRequest("j1", "site-a", "site-b", "image-1", "test")])
    again = ledger.accept_jobs(
        [
            JobRequest("j1", "site-a", "site-b", "image-1", "test"),
            JobRequest("j2", "site-a", "site-b", "image-1", "test"),
        ]
    )
    previous = metrics.install(recorder)
    try:
        metrics.intake_jobs(first, dead=0)
        metrics.intake_jobs(again, dead=2)
    finally:
        metrics.install(previous)
    samples = scrape(recorder.registry)
    counts = {
        outcome: value(samples, "migratio_intake_jobs_total", outcome=outcome)
        for outcome in ("created", "joined", "duplicate", "dead")
    }
    assert counts == {"created": 1, "joined": 1, "duplicate": 1, "dead": 2}


@pytest.mark.parametrize(
    ("raised", "conflict", "kind"),
    [
        (
            OperationalError("SELECT 1", {}, Exception("connection refused")),
            LedgerError,
            "unavailable",
        ),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), JobConflict, "conflict"),
        (ProgrammingError("SELECT", {}, Exception("no such column")), LedgerError, "error"),
    ],
    ids=["unavailable", "conflict", "error"],
)
def test_ledger_errors_are_counted_by_kind_where_they_are_typed(
    raised: Exception, conflict: type[LedgerError], kind: str
) -> None:
    recorder = Recorder(CollectorRegistry())
    previous = metrics.install(recorder)
    try:
        with pytest.raises(LedgerError), translated(conflict):
            raise raised
    finally:
        metrics.install(previous)
    samples = scrape(recorder.registry)
    for each in ("unavailable", "conflict", "error"):
        expected = 1 if each == kind else 0
        assert value(samples, "migratio_ledger_errors_total", kind=each) == expected


def test_the_ledger_gauges_are_cached_and_show_every_state_of_each_pair() -> None:
    now = [100.0]
    taken: list[int] = []
    answers = [
        Census({("uploading", "site-a", "site-b"): 2, ("done", "site-a", "aws-a"): 5}, 7),
        Census({("registering", "site-a", "site-b"): 2}, 0),
    ]

    def census() -> Census:
        taken.append(1)
        return answers[len(taken) - 1]

    registry = CollectorRegistry()
    registry.register(LedgerCollector(census, cache_seconds=5.0, clock=lambda: now[0]))
    assert taken == []  # registering does not query the ledger

    samples = scrape(registry)
    assert value(samples, "migratio_migrations", state="uploading", **_sites()) == 2
    assert value(samples, "migratio_migrations", state="queued", **_sites()) == 0
    assert value(samples, "migratio_migrations", state="done", **_sites(dest="aws-a")) == 5
    assert len([key for key in samples if key[0] == "migratio_migrations"]) == 2 * len(State)
    assert value(samples, "migratio_feedback_backlog") == 7
    now[0] += 4.9
    assert scrape(registry) == samples and len(taken) == 1
    now[0] += 0.2
    samples = scrape(registry)
    assert len(taken) == 2
    assert value(samples, "migratio_migrations", state="uploading", **_sites()) == 0
    assert value(samples, "migratio_migrations", state="registering", **_sites()) == 2
    assert value(samples, "migratio_feedback_backlog") == 0


def test_a_ledger_that_cannot_be_read_leaves_its_gauges_out_of_the_scrape() -> None:
    def census() -> Census:
        raise LedgerUnavailable("ledger unavailable: down", "down")

    recorder = Recorder(CollectorRegistry())
    recorder.registry.register(LedgerCollector(census))
    samples = scrape(recorder.registry)
    assert not [
        key for key in samples if key[0] in ("migratio_migrations", "migratio_feedback_backlog")
    ]
    assert value(samples, "migratio_lease_takeovers_total") == 0  # the rest is still there


def test_build_info_names_the_versions() -> None:
    samples = scrape(Recorder(CollectorRegistry()).registry)
    ((_, labels),) = [key for key in samples if key[0] == "migratio_build_info"]
    info = dict(labels)
    assert set(info) == {"version", "python", "sqlalchemy", "openstacksdk", "boto3"}
    assert info["version"] and info["python"].count(".") == 2
    assert info["sqlalchemy"].startswith("2.")


def test_error_classes_follow_the_supervisors_types() -> None:
    assert metrics.error_class(TransientError("x")) == "transient"
    assert metrics.error_class(PermanentError("x")) == "permanent"
    assert metrics.error_class(ConfigError("f", "k", "p")) == "permanent"
    assert metrics.error_class(LedgerUnavailable("x")) == "ledger"
    assert metrics.error_class(KeyError("x")) == "unexpected"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),  # noqa: S104  (parsed, not bound)
        ("metrics.example.org:65535", ("metrics.example.org", 65535)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_metrics_listen_takes_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert config.listen_address(listen) == expected
    daemon = config.DaemonConfig.model_validate(
        {"name": "site-a", "work_dir": "/tmp/w", "metrics_listen": listen}
    )
    assert daemon.metrics_listen == listen


@pytest.mark.parametrize(
    "listen", ["9464", "127.0.0.1", ":9464", "127.0.0.1:0", "host:70000", "::1:9464", "a b:1"]
)
def test_metrics_listen_refuses_what_is_not_host_and_port(listen: str) -> None:
    with pytest.raises(ValueError, match="metrics_listen"):
        config.DaemonConfig.model_validate(
            {"name": "site-a", "work_dir": "/tmp/w", "metrics_listen": listen}
        )


def test_metrics_are_off_unless_configured() -> None:
    assert (
        config.DaemonConfig.model_validate({"name": "site-a", "work_dir": "/tmp/w"}).metrics_listen
        is None
    )


def _sites(source: str = SOURCE, dest: str = DESTINATION) -> dict[str, str]:
    return {"source_site": source, "dest_site": dest}


def _migration(source: str = SOURCE, dest: str = DESTINATION) -> Any:
    """All a payload meter reads of a migration."""
    return SimpleNamespace(source_site=source, dest_site=dest)


def test_the_census_counts_by_state_and_pair_and_the_undelivered_feedback(ledger: Ledger) -> None:
    first = ledger.create("site-a", "site-b", "image-1")
    ledger.create("site-a", "site-b", "image-2")
    ledger.create("site-a", "aws-a", "image-3")
    ledger.transition(first.id, None, "start", "started by the test")
    for text in ("one", "two"):
        ledger.outbox.put(sidekiq.Job("feedback", "Worker", [text], sidekiq.new_jid(), 0.0))

    census = ledger.census()

    assert census.migrations == {
        ("exporting", "site-a", "site-b"): 1,
        ("queued", "site-a", "site-b"): 1,
        ("queued", "site-a", "aws-a"): 1,
    }
    assert census.feedback_backlog == 2
