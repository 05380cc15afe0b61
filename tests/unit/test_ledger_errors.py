"""Typed ledger errors: what the ledger raises when the database fails it, and how the
intake and the supervisor act on each type (never on SQLAlchemy's exceptions)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from migratio import config
from migratio.errors import JobConflict, LedgerUnavailable
from migratio.intake import consumer
from migratio.intake.consumer import Consumer, Stopping
from migratio.ledger.database import make_engine
from migratio.ledger.store import JobOutcome, JobRecorded, JobRequest, Ledger
from migratio.operations import open_ledger
from migratio.polling import Backoff
from migratio.redis_link import RedisLink
from migratio.supervisor import Supervisor
from tests.support.daemon_config import write_daemon_config

# Nothing listens there: the intake's Redis is never reached by these tests.
NO_REDIS = "redis://127.0.0.1:9/0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _job(job_id: str, image_id: str = "img") -> JobRequest:
    return JobRequest(job_id, "site-a", "site-b", image_id, "test")


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    sites = tmp_path / "sites"
    sites.mkdir()
    for site in ("site-a", "site-b"):
        (sites / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    # The shortest lease: a supervisor waits a third of it before retrying the ledger.
    written = write_daemon_config(
        tmp_path, sites, redis_url=NO_REDIS, lease_seconds=2, poll_seconds=0.01
    )
    return config.load_settings(written)


def _consumer(settings: config.Settings, ledger: Ledger) -> Consumer:
    return Consumer(settings, ledger, RedisLink(NO_REDIS), "test-consumer")


def test_an_unreachable_ledger_is_ledger_unavailable_from_every_facade_method() -> None:
    url = f"postgresql+psycopg://migratio:secret@127.0.0.1:{_free_port()}/ledger"
    ledger = Ledger(make_engine(url))
    try:
        for call in (
            lambda: ledger.get("0" * 36),
            lambda: ledger.claim("d1", 30),
            lambda: ledger.accept_jobs([_job("job-1")]),
            lambda: ledger.create("site-a", "site-b", "img"),
            lambda: ledger.outbox.pending(),
        ):
            with pytest.raises(LedgerUnavailable) as raised:
                call()
            assert str(raised.value).startswith("ledger unavailable: "), raised.value
            assert raised.value.reason and "\n" not in raised.value.reason
            assert "secret" not in str(raised.value)
    finally:
        ledger.close()
    with pytest.raises(LedgerUnavailable, match=r"^cannot open the ledger at "):
        Ledger.open(url)


def test_a_job_id_recorded_meanwhile_is_a_job_conflict(ledger: Ledger) -> None:
    # The same constraint a consumer racing us trips: the job id is in the ledger,
    # but was not when this transaction looked for it.
    ledger.create("site-a", "site-b", "img", job_id="job-1")
    with pytest.raises(JobConflict):
        ledger.accept_jobs([_job("job-2", "other"), _job("job-1", "img-2")])
    assert len(ledger.migrations()) == 1  # the whole batch rolled back


def test_the_intake_retries_a_job_conflict_three_times_then_refuses_only_that_job(
    settings: config.Settings, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = open_ledger(settings)
    ledger.create("site-a", "site-b", "img", job_id="job-1")
    caplog.set_level(logging.INFO, "migratio.intake.consumer")
    jobs = [_job("job-1", "img-2"), _job("job-2", "img-3")]
    recorded, refused = _consumer(settings, ledger)._record(jobs)
    assert [(r.job.job_id, r.outcome) for r in recorded] == [("job-2", JobOutcome.CREATED)]
    assert list(refused) == ["job-1"]
    assert refused["job-1"].startswith("the ledger refused it: ")
    retries = [r.getMessage() for r in caplog.records if "recorded concurrently" in r.message]
    assert retries == [
        f"intake: job id recorded concurrently (attempt {n}); retrying" for n in (1, 2, 3)
    ]
    ledger.close()


def test_the_intake_waits_out_an_unreachable_ledger(
    settings: config.Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = open_ledger(settings)
    accept = ledger.accept_jobs
    calls: list[int] = []

    def down_once(jobs: list[JobRequest], **options: float) -> list[JobRecorded]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise LedgerUnavailable("ledger unavailable: down for a moment", "down for a moment")
        return accept(jobs, **options)

    monkeypatch.setattr(ledger, "accept_jobs", down_once)
    monkeypatch.setattr(consumer, "LEDGER_BACKOFF", Backoff(first=0.1, factor=2.0, longest=1.0))
    recorded, refused = _consumer(settings, ledger)._record([_job("job-1")])
    assert [r.outcome for r in recorded] == [JobOutcome.CREATED]
    assert refused == {}
    assert calls == [1, 1]
    assert "intake: ledger unavailable (down for a moment); retrying in 0.1 s" in caplog.messages
    ledger.close()


def test_the_intake_stops_waiting_for_the_ledger_when_it_stops(settings: config.Settings) -> None:
    url = f"postgresql+psycopg://migratio@127.0.0.1:{_free_port()}/ledger"
    ledger = Ledger(make_engine(url))
    consumer = _consumer(settings, ledger)
    consumer.stop()
    with pytest.raises(Stopping):
        consumer._record([_job("job-1")])
    ledger.close()


def test_the_supervisor_survives_a_ledger_outage(
    settings: config.Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = open_ledger(settings)
    claim = ledger.claim
    outage = iter([LedgerUnavailable("ledger unavailable: gone", "gone")])

    def claim_after_outage(*args: object, **kwargs: object) -> object:
        if (error := next(outage, None)) is not None:
            raise error
        return claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "claim", claim_after_outage)
    # Waits a third of the lease before the next claim: 0.2 s (below the config's floor).
    settings.daemon = settings.daemon.model_copy(update={"lease_seconds": 0.6})
    Supervisor(settings, ledger).run(until_idle=True)
    assert "ledger unavailable, retrying: gone" in caplog.messages
    ledger.close()
