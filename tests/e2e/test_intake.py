"""Redis intake against a real Redis: bad jobs, duplicates, dead consumers, outages.

These daemons run with ``migrate: false`` (intake and feedback only), so no
cloud is needed and a thousand jobs take seconds.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from migratio.intake.dead_set import DEAD_PAYLOAD_BYTES
from migratio.ledger.database import make_engine
from tests.support import migratio_cli
from tests.support.bad_jobs import BAD_JOBS
from tests.support.daemon_config import write_daemon_config
from tests.support.redis_peer import PrivateRedis, sidekiq_job

NS = "atmosphere"
QUEUE = f"{NS}:queue:migration_site-a"
DEAD = f"{NS}:migratio:dead"
FEEDBACK = f"{NS}:queue:feedback"


@pytest.fixture
def redis_peer(tmp_path: Path) -> Iterator[PrivateRedis]:
    peer = PrivateRedis(tmp_path / "redis").start()
    yield peer
    peer.stop()


def intake_config(directory: Path, redis_url: str, **overrides: object) -> Path:
    """An intake-only daemon of site-a that knows the sites site-a and site-b."""
    sites = directory / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    for site in ("site-a", "site-b"):
        (sites / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    settings: dict[str, object] = {"redis_url": redis_url, "migrate": False, **overrides}
    return write_daemon_config(directory, sites, **settings)


def ledger_rows(config: Path, query: str) -> list[tuple[Any, ...]]:
    engine = make_engine(f"sqlite:///{config.parent / 'work' / 'ledger.sqlite'}")
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


def migration_count(config: Path) -> int:
    """Migrations in the ledger; 0 before the daemon has created it."""
    try:
        return int(ledger_rows(config, "SELECT count(*) FROM migrations")[0][0])
    except OperationalError:
        return 0


def feedback_args(peer: PrivateRedis) -> list[list[str]]:
    """Feedback jobs' args, oldest first (Sidekiq takes from the right)."""
    return [json.loads(raw)["args"] for raw in reversed(peer.client.lrange(FEEDBACK, 0, -1))]


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def processing_lists(peer: PrivateRedis) -> list[bytes]:
    return list(peer.client.scan_iter(match=f"{NS}:migratio:processing:*"))


def test_bad_jobs_are_dead_lettered_with_their_reason_and_the_consumer_goes_on(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    good = sidekiq_job(["img-good", "site-b"], jid="a" * 24)
    # Oldest first: LPUSH in this order, consumed from the right.
    for raw, _ in BAD_JOBS:
        redis_peer.client.lpush(QUEUE, raw)
    redis_peer.client.lpush(QUEUE, good)

    result = migratio_cli.run_until_idle(config, timeout=60)

    letters = [json.loads(raw) for raw in reversed(redis_peer.client.lrange(DEAD, 0, -1))]
    assert len(letters) == len(BAD_JOBS)
    for letter, (raw, reason) in zip(letters, BAD_JOBS, strict=True):
        assert letter["reason"].startswith(reason), letter
        assert "\n" not in letter["reason"]
        assert letter["payload"] == raw[:DEAD_PAYLOAD_BYTES].decode(
            "utf-8", errors="backslashreplace"
        )
        assert letter["queue"] == QUEUE
        assert isinstance(letter["at"], float)
        assert f"dead-lettered to {DEAD}: {letter['reason']}" in result.stderr
    # The consumer went on: the good job behind them is in the ledger, nothing is held.
    assert ledger_rows(config, "SELECT image_id, job_id FROM migrations") == [
        ("img-good", "a" * 24)
    ]
    assert redis_peer.client.llen(QUEUE) == 0
    assert processing_lists(redis_peer) == []
    # Where image and destination could be read, Atmosphere hears of the failure.
    failures = [args for args in feedback_args(redis_peer) if args[3].startswith("Migration fa")]
    assert failures == [
        ["img-x", "site-a", "nowhere", "Migration failed: unknown destination site 'nowhere'"],
        [
            "img-y",
            "site-a",
            "site-a",
            "Migration failed: source and destination are the same site 'site-a'",
        ],
    ]


def test_one_poison_job_in_a_batch_of_20_is_dead_lettered_alone_and_intake_never_stalls(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    poison = b'{"class": ["x"], "args": ["img-poison", "site-b"]}'
    batch = [sidekiq_job([f"img-{n}", "site-b"], jid=f"{n:024d}") for n in range(19)]
    batch.insert(7, poison)
    for raw in batch:
        redis_peer.client.lpush(QUEUE, raw)
    log = tmp_path / "migratio_cli.log"
    running = migratio_cli.start(config, log)
    try:
        wait_until(lambda: migration_count(config) == 19, what="the 19 good jobs")
        pushed = time.monotonic()
        redis_peer.client.lpush(QUEUE, sidekiq_job(["img-after", "site-b"], jid="f" * 24))
        wait_until(lambda: migration_count(config) == 20, timeout=5, what="the job after")
        took = time.monotonic() - pushed
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(30) == 0
    assert took < 1.0, f"a job pushed after the poison took {took:.2f} s"
    letters = [json.loads(raw) for raw in redis_peer.client.lrange(DEAD, 0, -1)]
    assert [(letter["reason"], letter["payload"]) for letter in letters] == [
        ("'class' must be a string, got [\"x\"]", poison.decode())
    ]
    images = {row[0] for row in ledger_rows(config, "SELECT image_id FROM migrations")}
    assert images == {f"img-{n}" for n in range(19)} | {"img-after"}
    assert redis_peer.client.llen(QUEUE) == 0 and processing_lists(redis_peer) == []
    assert "unexpected error" not in log.read_text()


def test_dead_letters_keep_a_bounded_prefix_and_the_list_is_trimmed(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url, dead_letters_max=3)
    huge = [json.dumps({"class": "nope", "junk": str(n) * 10_000_000}).encode() for n in range(2)]
    small = [json.dumps({"class": f"nope-{n}"}).encode() for n in range(3)]
    for raw in (*huge, *small):
        redis_peer.client.lpush(QUEUE, raw)
    migratio_cli.run_until_idle(config, timeout=60)

    letters = [json.loads(raw) for raw in redis_peer.client.lrange(DEAD, 0, -1)]
    assert [letter["reason"] for letter in letters] == [
        "unknown class 'nope-2'",
        "unknown class 'nope-1'",
        "unknown class 'nope-0'",
    ]
    redis_peer.client.delete(DEAD)
    config = intake_config(tmp_path / "big", redis_peer.url)
    for raw in huge:
        redis_peer.client.lpush(QUEUE, raw)
    migratio_cli.run_until_idle(config, timeout=60)
    stored = redis_peer.client.lrange(DEAD, 0, -1)
    assert len(stored) == 2
    for raw, letter_bytes in zip(reversed(huge), stored, strict=True):
        assert len(letter_bytes) < DEAD_PAYLOAD_BYTES + 1024
        letter = json.loads(letter_bytes)
        assert letter["truncated"] is True and letter["payload_bytes"] == len(raw)
        assert letter["payload_sha256"] == hashlib.sha256(raw).hexdigest()
        assert letter["payload"] == raw[:DEAD_PAYLOAD_BYTES].decode()


def test_a_job_is_recorded_once_and_jobs_for_a_running_migration_join_it(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    first = sidekiq_job(["img-1", "site-b"], jid="1" * 24)
    native = b'{"class":"migratio","image":"img-2","to":"site-b"}'
    for raw in (
        first,
        first,  # the same job again (a redelivery)
        sidekiq_job(["img-1", "site-b"], jid="2" * 24),  # same image and sites, new job
        native,
        native,  # no jid: the same bytes are the same job
        b'{"class":"migratio","image":"img-3","to":"site-a","from":"site-b"}',
    ):
        redis_peer.client.lpush(QUEUE, raw)
    migratio_cli.run_until_idle(config, timeout=60)
    # A redelivery after everything was recorded: still nothing new.
    redis_peer.client.lpush(QUEUE, first)
    migratio_cli.run_until_idle(config, timeout=60)

    migrations = ledger_rows(
        config, "SELECT id, image_id, source_site, dest_site, job_id FROM migrations"
    )
    by_image = {row[1]: row for row in migrations}
    assert sorted(by_image) == ["img-1", "img-2", "img-3"] and len(migrations) == 3
    assert by_image["img-1"][2:] == ("site-a", "site-b", "1" * 24)
    assert by_image["img-2"][2:4] == ("site-a", "site-b") and len(by_image["img-2"][4]) == 24
    assert by_image["img-3"][2:4] == ("site-b", "site-a")
    jobs = ledger_rows(config, "SELECT job_id, migration_id, outcome FROM jobs ORDER BY job_id")
    assert jobs == sorted(
        [
            ("1" * 24, by_image["img-1"][0], "created"),
            ("2" * 24, by_image["img-1"][0], "attached"),
            (by_image["img-2"][4], by_image["img-2"][0], "created"),
            (by_image["img-3"][4], by_image["img-3"][0], "created"),
        ]
    )
    notes = [
        row[1:]
        for row in ledger_rows(
            config,
            "SELECT migration_id, from_state, to_state, message FROM transitions ORDER BY id",
        )
        if row[0] == by_image["img-1"][0]
    ]
    assert notes[-1] == ("queued", "queued", f"job {'2' * 24} from {QUEUE} joined this migration")
    assert redis_peer.client.llen(DEAD) == 0
    started = [args[:3] for args in feedback_args(redis_peer) if args[3] == "Migration started"]
    assert started == [
        ["img-1", "site-a", "site-b"],
        ["img-1", "site-a", "site-b"],
        ["img-2", "site-a", "site-b"],
        ["img-3", "site-b", "site-a"],
    ]


def test_jobs_held_by_a_dead_consumer_go_back_to_the_queue_at_start(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    prefix = f"{NS}:migratio:processing:migration_site-a:"
    redis_peer.client.lpush(prefix + "dead-host:1:aaaaaa", sidekiq_job(["img-d", "site-b"]))
    redis_peer.client.lpush(prefix + "live-host:2:bbbbbb", sidekiq_job(["img-l", "site-b"]))
    redis_peer.client.set(f"{NS}:migratio:heartbeat:live-host:2:bbbbbb", "x", ex=60)

    result = migratio_cli.run_until_idle(config, timeout=60)

    assert ledger_rows(config, "SELECT image_id FROM migrations") == [("img-d",)]
    assert "1 jobs of consumers without heartbeat back on" in result.stderr
    assert processing_lists(redis_peer) == [(prefix + "live-host:2:bbbbbb").encode()]


def test_submit_via_redis_pushes_a_native_job_the_daemon_takes(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    jid = migratio_cli.cli(config, "submit", "--via-redis", "--image", "img-9", "--to", "site-b")
    jid_text = jid.stdout.strip()
    assert len(jid_text) == 24
    assert redis_peer.client.smembers(f"{NS}:queues") == {b"migration_site-a"}
    refused = migratio_cli.cli(
        config, "submit", "--via-redis", "--image", "x", "--to", "nowhere", check=False
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "migratio: usage error: --to: unknown site 'nowhere' (known: site-a, site-b)"
    )
    assert redis_peer.client.llen(QUEUE) == 1

    migratio_cli.run_until_idle(config, timeout=60)

    assert ledger_rows(
        config, "SELECT image_id, source_site, dest_site, job_id FROM migrations"
    ) == [("img-9", "site-a", "site-b", jid_text)]


def test_redis_down_at_start_is_logged_once_and_intake_begins_when_it_comes(
    tmp_path: Path,
) -> None:
    peer = PrivateRedis(tmp_path / "redis")  # not started yet
    config = intake_config(tmp_path, peer.url, poll_seconds=0.2)
    log = tmp_path / "migratio_cli.log"
    runner = migratio_cli.start(config, log)
    try:
        wait_until(lambda: "unreachable" in log.read_text(), 30, "the outage to be logged")
        time.sleep(2)  # several reconnect attempts
        peer.start()
        peer.client.lpush(QUEUE, sidekiq_job(["img-late", "site-b"], jid="3" * 24))
        wait_until(
            lambda: migration_count(config) == 1,
            30,
            "the job to be recorded",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
        peer.stop()
    output = log.read_text()
    assert output.count("unreachable") == 1, output
    assert output.count("reachable again") == 1, output


def test_redis_killed_and_restarted_while_1000_jobs_are_consumed(tmp_path: Path) -> None:
    """None lost, none twice; Redis keeps every acknowledged write across the SIGKILL."""
    peer = PrivateRedis(tmp_path / "redis", persistent=True).start()
    config = intake_config(tmp_path, peer.url, intake_batch=5, poll_seconds=0.2)
    jids = [f"{n:024x}" for n in range(1000)]
    with peer.client.pipeline(transaction=False) as pipe:
        for n, jid in enumerate(jids):
            pipe.lpush(QUEUE, sidekiq_job([f"image-{n:04d}", "site-b"], jid=jid))
        pipe.execute()
    log = tmp_path / "migratio_cli.log"
    runner = migratio_cli.start(config, log)
    try:
        wait_until(lambda: migration_count(config) >= 150, 60, "150 jobs recorded")
        peer.kill()
        recorded_at_kill = migration_count(config)
        assert recorded_at_kill < 1000, "consumption ended before the kill: test proves nothing"
        wait_until(lambda: "unreachable" in log.read_text(), 30, "the outage to be logged")
        time.sleep(1.5)
        assert runner.poll() is None, "the daemon must survive the outage"
        peer.start()  # same port, same append-only file
        wait_until(lambda: migration_count(config) == 1000, 120, "1000 jobs recorded")
        wait_until(lambda: peer.client.llen(QUEUE) == 0 and not processing_lists(peer), 30)
        wait_until(
            lambda: (
                ledger_rows(
                    config, "SELECT count(*) FROM feedback_outbox WHERE delivered_at IS NULL"
                )
                == [(0,)]
            ),
            60,
            "the feedback outbox to drain",
        )
    finally:
        runner.send_signal(signal.SIGTERM)
        exit_code = runner.wait(30)
        peer.stop()
    assert exit_code == 0
    recorded = ledger_rows(config, "SELECT job_id, image_id FROM migrations")
    assert len(recorded) == 1000
    assert sorted(job_id for job_id, _ in recorded) == jids
    assert all(image == f"image-{int(job_id, 16):04d}" for job_id, image in recorded)
    assert ledger_rows(config, "SELECT count(*), count(DISTINCT job_id) FROM jobs") == [
        (1000, 1000)
    ]
    output = log.read_text()
    assert output.count("unreachable") == 1, "one outage, logged once"
    assert output.count("reachable again") == 1
    assert 150 <= recorded_at_kill < 1000
