"""R2: Redis stopped mid-intake of 1,000 jobs, and while 100 feedback messages are
pending in the outbox. Counted, not sampled: jobs lost or recorded twice, feedback
messages lost, delivered twice or out of order within a migration.

Both run an intake-and-feedback daemon (``migrate: false``: no cloud needed) on a
private Redis of the test that keeps every acknowledged write (append-only file,
fsync always), stopped with SIGTERM and started again on its port.
Outage length: ``MIGRATIO_OUTAGE_SECONDS`` (tests/support/outages.py). The intake
case is ``chaos`` only: the default run has its twin, Redis SIGKILLed mid-intake
(test_intake.py), the same path without the figures.
"""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
from testbed_lib import processes

from tests.e2e.test_intake import (
    DEAD,
    FEEDBACK,
    QUEUE,
    intake_config,
    ledger_rows,
    migration_count,
    processing_lists,
    wait_until,
)
from tests.support import migratio_cli, outages
from tests.support.redis_peer import PrivateRedis, sidekiq_job
from tests.support.reliability import record

pytestmark = pytest.mark.reliability

JOBS = 1000
MESSAGES = 100  # 20 migrations, 5 messages each (queued, started, read, checked, uploading)


def _halt(peer: PrivateRedis) -> None:
    """SIGTERM (Redis syncs its append-only file and exits); the client stays."""
    assert peer.server is not None
    processes.stop([peer.server])
    peer.server = None


def _pending(config: Path) -> int:
    rows = ledger_rows(config, "SELECT count(*) FROM feedback_outbox WHERE delivered_at IS NULL")
    return int(rows[0][0])


@pytest.mark.chaos  # the default run has its SIGKILL twin (test_intake.py)
def test_redis_stopped_mid_intake_of_1000_jobs_loses_and_duplicates_none(tmp_path: Path) -> None:
    seconds = outages.outage_seconds()
    peer = PrivateRedis(tmp_path / "redis", persistent=True).start()
    config = intake_config(tmp_path, peer.url, intake_batch=5, poll_seconds=0.2)
    jids = [f"{n:024x}" for n in range(JOBS)]
    with peer.client.pipeline(transaction=False) as pipe:
        for n, jid in enumerate(jids):
            pipe.lpush(QUEUE, sidekiq_job([f"image-{n:04d}", "site-b"], jid=jid))
        pipe.execute()
    log = tmp_path / "migratio.log"
    daemon = migratio_cli.start(config, log)
    try:
        wait_until(lambda: migration_count(config) >= 150, 60, "150 jobs recorded")
        at_stop: list[int] = []
        outage = outages.take_down(
            lambda: _halt(peer),
            peer.start,  # same port, same append-only file
            seconds,
            while_down=lambda: at_stop.append(migration_count(config)),
        )
        assert at_stop[0] < JOBS, "consumption ended before the stop: the test proves nothing"
        assert outages.still_running(daemon), "the daemon must survive the outage"
        wait_until(lambda: migration_count(config) > at_stop[0], 60, "intake to go on")
        recover = time.monotonic() - outage.returned_at
        wait_until(lambda: migration_count(config) == JOBS, 120, f"{JOBS} jobs recorded")
        wait_until(lambda: peer.client.llen(QUEUE) == 0 and not processing_lists(peer), 30)
        assert outages.still_running(daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(30)
        dead = peer.client.zcard(DEAD) if peer.server else -1
        peer.stop()
    assert exit_code == 0
    recorded = ledger_rows(config, "SELECT job_id, image_id FROM migrations")
    job_ids = [job_id for job_id, _ in recorded]
    lost = len(set(jids) - set(job_ids))
    duplicated = len(job_ids) - len(set(job_ids))
    assert (lost, duplicated, dead) == (0, 0, 0)
    assert all(image == f"image-{int(job_id, 16):04d}" for job_id, image in recorded)
    assert ledger_rows(config, "SELECT count(*), count(DISTINCT job_id) FROM jobs") == [
        (JOBS, JOBS)
    ]
    output = log.read_text()
    assert output.count("unreachable") == 1, "one outage, logged once"
    assert output.count("reachable again") == 1
    record(
        "R2", f"Redis stopped mid-intake of {JOBS} jobs", lost=lost, duplicated=duplicated,
        out_of_order=0, recorded_before_stop=at_stop[0], outage_s=round(outage.down_for, 1),
        recover_s=round(recover, 2),
    )  # fmt: skip


def test_redis_stopped_while_100_feedback_messages_are_pending_delivers_each_once_in_order(
    tmp_path: Path,
) -> None:
    seconds = outages.outage_seconds()
    peer = PrivateRedis(tmp_path / "redis", persistent=True).start()
    config = intake_config(tmp_path, peer.url, poll_seconds=0.2)
    log = tmp_path / "migratio.log"
    daemon = migratio_cli.start(config, log)
    try:
        wait_until(lambda: "intake: consuming" in log.read_text(), 30, "the daemon to start")
        ledger = migratio_cli.ledger_of(config)

        def pile_up_feedback() -> None:
            # A migrating daemon of its own: 5 transitions, each with its message.
            for n in range(MESSAGES // 5):
                migration = ledger.create("site-a", "site-b", f"image-{n:02d}")
                assert ledger.claim("another-daemon", 300) is not None
                for trigger in ("start", "exported", "converted", "uploaded"):
                    ledger.transition(migration.id, "another-daemon", trigger, trigger)
            time.sleep(1.0)  # several delivery rounds, all refused
            assert _pending(config) == MESSAGES

        outage = outages.take_down(
            lambda: _halt(peer), peer.start, seconds, while_down=pile_up_feedback
        )
        assert outages.still_running(daemon), "the daemon must survive the outage"
        wait_until(lambda: _pending(config) < MESSAGES, 60, "a first delivery")
        first = time.monotonic() - outage.returned_at
        wait_until(lambda: _pending(config) == 0, 60, "the outbox to drain")
        drained = time.monotonic() - outage.returned_at
        delivered = [json.loads(raw) for raw in reversed(peer.client.lrange(FEEDBACK, 0, -1))]
        assert outages.still_running(daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(30)
        peer.stop()
    assert exit_code == 0

    outbox = ledger_rows(config, "SELECT migration_id, jid FROM feedback_outbox ORDER BY id")
    expected: dict[str, list[str]] = defaultdict(list)
    for migration_id, jid in outbox:
        expected[migration_id].append(jid)
    of_migration = {jid: migration_id for migration_id, jid in outbox}
    received: dict[str, list[str]] = defaultdict(list)
    for job in delivered:
        received[of_migration.get(job["jid"], "unknown")].append(job["jid"])
    jids = [job["jid"] for job in delivered]
    lost = len({jid for _, jid in outbox} - set(jids))
    duplicated = len(jids) - len(set(jids))
    out_of_order = sum(received[m] != jids_of_m for m, jids_of_m in expected.items())
    assert len(outbox) == MESSAGES and len(expected) == MESSAGES // 5
    assert (lost, duplicated, out_of_order) == (0, 0, 0)
    assert len(delivered) == MESSAGES and "unknown" not in received
    assert all(job["args"][0].startswith("image-") for job in delivered)
    record(
        "R2", f"Redis stopped while {MESSAGES} feedback messages are pending", lost=lost,
        duplicated=duplicated, out_of_order=out_of_order, outage_s=round(outage.down_for, 1),
        first_delivery_s=round(first, 2), drained_s=round(drained, 2),
    )  # fmt: skip
