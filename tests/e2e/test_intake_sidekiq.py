"""Redis intake and feedback end to end on the test bed, with Atmosphere's side played by
real Ruby Sidekiq (Debian's ruby-sidekiq and redis-namespace): its client enqueues the
migration as Atmosphere's VmtMigrator does, its server runs the feedback worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import testbed_lib
import yaml
from openstack.connection import Connection

from migratio import faults
from migratio.ledger.store import Ledger
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.redis_peer import PrivateRedis, sidekiq_job

pytestmark = pytest.mark.testbed

RUBY = Path(__file__).resolve().parent.parent / "support" / "ruby"
RUBY_PACKAGES = ["ruby", "ruby-sidekiq", "ruby-redis-namespace"]
NS = "atmosphere"


@pytest.fixture(scope="module")
def ruby_sidekiq() -> None:
    testbed_lib.ensure_packages(RUBY_PACKAGES)


@pytest.fixture
def source_image(site_a: Connection, tmp_path: Path) -> str:
    """A fresh 4 MiB template at site-a, so its copies at site-b can be counted."""
    path = images.random_qcow2(tmp_path / "template.qcow2", 4)
    return glance_peer.upload(site_a, path, name=f"sidekiq-{tmp_path.name}")


@pytest.fixture
def redis_peer(tmp_path: Path) -> Iterator[PrivateRedis]:
    peer = PrivateRedis(tmp_path / "redis").start()
    yield peer
    peer.stop()


@pytest.fixture
def feedback_server(ruby_sidekiq: None, redis_peer: PrivateRedis, tmp_path: Path) -> Iterator[Path]:
    """A Sidekiq server with Atmosphere's feedback worker; yields the file it appends to."""
    received = tmp_path / "feedback.jsonl"
    log = tmp_path / "sidekiq.log"
    env = {
        **os.environ,
        "REDIS_URL": redis_peer.url,
        "REDIS_NAMESPACE": NS,
        "FEEDBACK_FILE": str(received),
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            # One thread: messages are handled in the order they were queued.
            ["sidekiq", "-r", str(RUBY / "feedback_worker.rb"), "-q", "feedback", "-c", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        _wait(lambda: redis_peer.client.scard(f"{NS}:processes") > 0, 60, "sidekiq to start")
        yield received
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_bed_config_points_the_daemon_at_the_beds_redis(testbed: testbed_lib.Bed) -> None:
    settings = yaml.safe_load(testbed.config_path.read_text())
    assert settings["redis_url"] == testbed.redis_url == testbed.env["MIGRATIO_REDIS_URL"]
    assert settings["namespace"] == "atmosphere"
    assert settings["name"] == "site-a"
    assert redis.Redis.from_url(testbed.redis_url).ping()


def test_atmosphere_sidekiq_job_migrates_and_every_status_reaches_its_worker(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    redis_peer: PrivateRedis,
    feedback_server: Path,
    source_image: str,
    site_b: Connection,
) -> None:
    config = write_daemon_config(tmp_path, testbed.dir / "sites", redis_url=redis_peer.url)
    runner = migratio_cli.start(config, tmp_path / "migratio_cli.log")
    try:
        enqueued = subprocess.run(
            [
                "ruby",
                str(RUBY / "enqueue.rb"),
                redis_peer.url,
                NS,
                "site-a",
                "openstack",
                source_image,
                "site-b",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        jid = enqueued.stdout.strip()
        ledger = migratio_cli.ledger_of(config)
        _wait(lambda: _by_job(ledger, jid) is not None, 60, "the job to be recorded")
        migration_id = _by_job(ledger, jid)
        assert migration_id is not None
        done = migratio_cli.wait_for(ledger, migration_id, state="done", timeout=180)
        _wait(lambda: _done_received(feedback_server), 30, "the done message in Ruby")
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(60) == 0

    received = _read(feedback_server)
    assert [line[1:4] for line in received] == [[source_image, "site-a", "site-b"]] * 6
    assert [line[4] for line in received] == [
        "Migration started",
        f"Reading image {source_image} at site-a",
        "Image checked; preparing it for site-b",
        "Uploading image to site-b",
        "Registering image at site-b",
        f"Migration done: image {done.dest_image_id} at site-b",
    ]
    assert len({line[0] for line in received}) == 6  # each message its own Sidekiq job
    assert [c["id"] for c in glance_peer.find(site_b, source_uuid=source_image)] == [
        done.dest_image_id
    ]


def test_daemon_killed_between_move_and_ledger_commit_runs_the_job_exactly_once(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    redis_peer: PrivateRedis,
    source_image: str,
    site_b: Connection,
) -> None:
    config = write_daemon_config(
        tmp_path,
        testbed.dir / "sites",
        redis_url=redis_peer.url,
        intake_heartbeat_seconds=1,
    )
    jid = "c0ffee" * 4
    redis_peer.client.lpush(
        f"{NS}:queue:migration_site-a", sidekiq_job([source_image, "site-b"], jid=jid)
    )
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "migratio", "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, faults.ENVIRONMENT_VARIABLE: "intake.after_move=pause:120"},
        )
    try:
        _wait(
            lambda: "fault point intake.after_move: pause" in log.read_text(),
            60,
            "the daemon to move the job",
        )
        [held] = list(redis_peer.client.scan_iter(match=f"{NS}:migratio:processing:*"))
        assert redis_peer.client.llen(held) == 1
        assert redis_peer.client.llen(f"{NS}:queue:migration_site-a") == 0
    finally:
        first.kill()
        first.wait()
    ledger = migratio_cli.ledger_of(config)
    assert ledger.migrations() == []

    time.sleep(1.5)  # the dead daemon's heartbeat expires
    migratio_cli.run_until_idle(config, timeout=180)
    migratio_cli.run_until_idle(config, timeout=180)  # and nothing comes back a second time

    [migration] = ledger.migrations()
    assert (migration.image_id, migration.job_id, migration.state) == (source_image, jid, "done")
    history = migratio_cli.show(config, migration.id)["history"]
    assert [row["to"] for row in history].count("exporting") == 1
    assert [c["id"] for c in glance_peer.find(site_b, source_uuid=source_image)] == [
        migration.dest_image_id
    ]
    assert list(redis_peer.client.scan_iter(match=f"{NS}:migratio:processing:*")) == []
    assert redis_peer.client.llen(f"{NS}:queue:migration_site-a") == 0


def _by_job(ledger: Ledger, jid: str) -> str | None:
    return next((m.id for m in ledger.migrations() if m.job_id == jid), None)


def _read(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _done_received(path: Path) -> bool:
    received = _read(path)
    return bool(received) and received[-1][4].startswith("Migration done")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
