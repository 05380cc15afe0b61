"""Feedback: status jobs written with each transition, delivered in order once Redis is up."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from migratio import faults
from migratio.config import load_settings
from migratio.feedback.deliverer import Deliverer
from migratio.feedback.outbox import Outbox, status_job
from migratio.ledger.database import make_engine, upgrade
from migratio.ledger.store import JobRequest, Ledger
from migratio.operations import open_ledger
from migratio.redis_link import RedisLink
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.ledgers import empty_ledger_engine
from tests.support.redis_peer import PrivateRedis, as_bytes

FEEDBACK = "atmosphere:queue:feedback"
WORKER = "Atmosphere::UpdateMigrationJobStatusWorker"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    empty_ledger_engine(url).dispose()
    yield url


def test_feedback_waits_in_the_ledger_while_redis_is_down_then_arrives_in_order(
    tmp_path: Path, ledger_url: str
) -> None:
    engine = make_engine(ledger_url)
    upgrade(engine)
    ledger = Ledger(engine, on_change=status_job)
    outbox = Outbox(ledger)
    peer = PrivateRedis(tmp_path / "redis")  # down for now
    link = RedisLink(peer.url)
    deliverer = Deliverer(outbox, link, "atmosphere", poll_seconds=0.05)
    deliverer.start()
    try:
        done = ledger.create("site-a", "site-b", "img-ok")
        assert ledger.claim("d1", 30) is not None
        for trigger in ("start", "exported", "converted", "uploaded"):
            ledger.transition(done.id, "d1", trigger, trigger)
        ledger.transition(done.id, "d1", "registered", "registered", dest_image_id="dest-42")
        [joined] = ledger.accept_jobs([JobRequest("j" * 24, "site-a", "site-b", "img-x", "q")])
        assert ledger.claim("d1", 30) is not None
        ledger.transition(
            joined.migration_id, "d1", "fail", "no such image", last_error="no such image"
        )
        time.sleep(0.5)
        assert outbox.pending() == 8

        peer.start()
        deadline = time.monotonic() + 30
        while outbox.pending():
            assert time.monotonic() < deadline, "feedback never delivered"
            time.sleep(0.05)
        raw_jobs = as_bytes(reversed(peer.client.lrange(FEEDBACK, 0, -1)))
    finally:
        deliverer.stop(flush_seconds=0)
        deliverer.join(10)
        link.close()
        peer.stop()
        engine.dispose()

    jobs = [json.loads(raw) for raw in raw_jobs]
    assert [job["args"] for job in jobs] == [
        ["img-ok", "site-a", "site-b", "Migration started"],
        ["img-ok", "site-a", "site-b", "Reading image img-ok at site-a"],
        ["img-ok", "site-a", "site-b", "Image checked; preparing it for site-b"],
        ["img-ok", "site-a", "site-b", "Uploading image to site-b"],
        ["img-ok", "site-a", "site-b", "Registering image at site-b"],
        ["img-ok", "site-a", "site-b", "Migration done: image dest-42 at site-b"],
        ["img-x", "site-a", "site-b", "Migration started"],
        ["img-x", "site-a", "site-b", "Migration failed: no such image"],
    ]
    for raw, job in zip(raw_jobs, jobs, strict=True):
        # Sidekiq's field order, byte for byte at the start of the payload.
        assert raw.startswith(b'{"retry":false,"queue":"feedback","class":"' + WORKER.encode())
        assert list(job) == [
            "retry",
            "queue",
            "class",
            "args",
            "jid",
            "created_at",
            "enqueued_at",
        ]
        assert re.fullmatch(r"[0-9a-f]{24}", job["jid"])
        assert isinstance(job["created_at"], float) and isinstance(job["enqueued_at"], float)
        assert job["created_at"] <= job["enqueued_at"]
    assert len({job["jid"] for job in jobs}) == len(jobs)


def test_status_text_passes_utf8_and_newlines_unchanged(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    upgrade(engine)
    ledger = Ledger(engine, on_change=status_job)
    outbox = Outbox(ledger)
    migration = ledger.create("site-a", "site-b", "obraz-żółw")
    ledger.claim("d1", 30)
    reason = "źródło niedostępne\nsecond line"
    ledger.transition(migration.id, "d1", "fail", reason, last_error=reason)
    sent: list[str] = []
    outbox.deliver(lambda jobs: sent.extend(job.payload(time.time()) for job in jobs))
    assert json.loads(sent[-1])["args"] == [
        "obraz-żółw",
        "site-a",
        "site-b",
        "Migration failed: źródło niedostępne\nsecond line",
    ]
    assert "żółw" in sent[-1]  # UTF-8 as is, not \u escapes
    assert outbox.pending() == 0
    engine.dispose()


def test_feedback_off_writes_no_outbox_rows(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    for site in ("site-a", "site-b"):
        (tmp_path / "sites" / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    config = tmp_path / "migratio.yml"
    base = {"name": "site-a", "work_dir": str(tmp_path / "work"), "sites_dir": "sites"}
    for feedback, rows in ((False, 0), (True, 1)):
        config.write_text(yaml.safe_dump({**base, "feedback": feedback}))
        ledger = open_ledger(load_settings(config))
        ledger.create("site-a", "site-b", f"img-{feedback}")
        with ledger.engine.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM feedback_outbox WHERE args LIKE :image"),
                {"image": f'["img-{feedback}"%'},
            ).scalar()
        assert count == rows
        ledger.engine.dispose()


PROGRESS = re.compile(
    r"Uploading image to site-b: (\d{1,2})% \((\d+) of (\d+) MiB, (\d+) (?:MiB|KiB)/s\)"
)


@pytest.mark.testbed
def test_a_real_upload_reports_progress_lines_every_10_percent_in_order(
    testbed: Any, site_a: Any, tmp_path: Path
) -> None:
    """256 MiB from site-a to site-b, throttled to a few MiB a second by a pause at each
    chunk read (so the lines do not depend on this machine's speed); meanwhile the
    daemon shows the migration as its busy work in Sidekiq's process set."""
    path = images.random_qcow2(tmp_path / "big.qcow2", 256)
    image = glance_peer.upload(site_a, path, name=f"progress-{tmp_path.name}")
    size_mib = path.stat().st_size // (1024 * 1024)
    peer = PrivateRedis(tmp_path / "redis").start()
    config = write_daemon_config(tmp_path, testbed.dir / "sites", redis_url=peer.url)
    busy: list[int] = []
    try:
        migration_id = migratio_cli.submit(config, image)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "migratio", "--config", str(config), "run", "--until-idle"],
            stdout=(tmp_path / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, faults.ENVIRONMENT_VARIABLE: "transfer.bytes=pause:0.03@1"},
        )
        while daemon.poll() is None:
            for identity in as_bytes(peer.client.smembers("atmosphere:processes")):
                busy.append(int(peer.client.hget(b"atmosphere:" + identity, "busy") or 0))
            time.sleep(0.2)
        assert daemon.returncode == 0
        raw_jobs = as_bytes(reversed(peer.client.lrange(FEEDBACK, 0, -1)))
    finally:
        peer.stop()

    jobs = [json.loads(raw) for raw in raw_jobs]
    texts = [job["args"][3] for job in jobs]
    first = texts.index("Uploading image to site-b")
    last = texts.index("Registering image at site-b")
    progress = [(job["created_at"], job["args"][3]) for job in jobs[first + 1 : last]]
    assert len(progress) >= 3, texts
    readings = []
    for created_at, line in progress:
        match = PROGRESS.fullmatch(line)
        assert match is not None, line
        percent, done, total = int(match[1]), int(match[2]), int(match[3])
        assert total == size_mib and 0 < percent < 100 and done <= total
        readings.append((created_at, percent))
    for (at, percent), (next_at, next_percent) in itertools.pairwise(readings):
        assert next_percent - percent >= 10 or next_at - at >= 30
        # The daemon spaces lines by its monotonic clock; created_at is stamped a
        # few microseconds later by the wall clock (seen: 1.99999 s apart).
        assert next_at - at >= 2 - 0.01
    assert texts[-1].startswith("Migration done: image ")
    assert migratio_cli.show(config, migration_id)["state"] == "done"
    assert 1 in busy and busy[-1] in (0, 1)
