"""Sidekiq's own tools see migratio: the real Ruby Sidekiq API (Debian's ruby-sidekiq 6.4
with redis-namespace, as Sidekiq Web uses it) lists the running daemon in its process
set and shows dead jobs in its Dead set, and its Retry hands them back to the intake.

These daemons run with ``migrate: false`` (intake and feedback only): no cloud needed.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testbed_lib

from migratio.intake.dead_set import DEAD_PAYLOAD_BYTES, SIDEKIQ_DEAD_TIMEOUT_SECONDS
from migratio.intake.process_set import SidekiqProcess, Work
from tests.e2e.test_intake import intake_config, ledger_rows, migration_count, wait_until
from tests.support import migratio_cli
from tests.support.redis_peer import PrivateRedis, as_bytes, sidekiq_job

RUBY = Path(__file__).resolve().parent.parent / "support" / "ruby"
NS = "atmosphere"
QUEUE = f"{NS}:queue:migration_site-a"
DEAD_LIST = f"{NS}:migratio:dead"
DEAD_SET = f"{NS}:dead"


@pytest.fixture(scope="module")
def ruby_sidekiq() -> None:
    testbed_lib.ensure_packages(["ruby", "ruby-sidekiq", "ruby-redis-namespace"])


@pytest.fixture
def redis_peer(tmp_path: Path, ruby_sidekiq: None) -> Iterator[PrivateRedis]:
    peer = PrivateRedis(tmp_path / "redis").start()
    yield peer
    peer.stop()


def sidekiq_api(peer: PrivateRedis, *args: str) -> Any:
    """What Sidekiq's API answers (``tests/support/ruby/sidekiq_api.rb``)."""
    result = subprocess.run(
        ["ruby", str(RUBY / "sidekiq_api.rb"), peer.url, NS, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(result.stdout)


def enqueue(peer: PrivateRedis, image: str, dest: str) -> str:
    """A job pushed as Atmosphere's VmtMigrator does; its jid."""
    result = subprocess.run(
        ["ruby", str(RUBY / "enqueue.rb"), peer.url, NS, "site-a", "openstack", image, dest],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


# ---- the process set ----------------------------------------------------------------


def test_the_running_daemon_is_a_process_in_sidekiqs_process_set_until_it_stops(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url, intake_heartbeat_seconds=1.5)
    daemon = migratio_cli.start(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: redis_peer.client.scard(f"{NS}:processes") == 1, what="the heartbeat")
        before = time.time()
        time.sleep(0.6)  # one more beat
        answer = sidekiq_api(redis_peer, "processes")
    finally:
        stop(daemon)

    assert answer["size"] == 1
    [process] = answer["processes"]
    host = socket.gethostname()
    assert process["identity"].startswith(f"{host}:{daemon.pid}:")
    assert (process["hostname"], process["pid"], process["tag"]) == (host, daemon.pid, "migratio")
    assert process["queues"] == ["migration_site-a"]
    assert process["labels"][0] == "intake only" and process["labels"][1].startswith("migratio ")
    assert (process["busy"], process["quiet"], process["concurrency"]) == (0, "false", 0)
    assert before - 1 < process["beat"] <= time.time()
    assert process["started_at"] < before and process["rss"] > 1000
    assert answer["work"] == []
    # A clean stop leaves the set, as Sidekiq's own processes do.
    assert sidekiq_api(redis_peer, "processes") == {"size": 0, "processes": [], "work": []}
    assert redis_peer.client.keys(f"{NS}:{host}:*") == []


def test_running_migrations_are_the_process_busy_work_as_sidekiq_reads_it(
    redis_peer: PrivateRedis,
) -> None:
    process = SidekiqProcess(
        redis_peer.client,
        namespace=NS,
        identity="host-x:4242:abcdef",
        queue="migration_site-a",
        concurrency=4,
    )
    work = [
        Work("m-1", "j" * 24, "img-1", "site-a", "site-b", "uploading", 1_800_000_000.5),
        Work("m-2", None, "img-2", "site-a", "aws-a", "exporting", 1_800_000_100.0),
    ]
    assert process.beat(work) is None
    answer = sidekiq_api(redis_peer, "processes")
    [seen] = answer["processes"]
    assert (seen["identity"], seen["busy"], seen["concurrency"]) == ("host-x:4242:abcdef", 2, 4)
    assert [(w["tid"], w["queue"], w["run_at"]) for w in answer["work"]] == [
        ("m-1", "migration_site-a", 1_800_000_000),
        ("m-2", "migration_site-a", 1_800_000_100),
    ]
    payload = answer["work"][0]["payload"]
    assert (payload["class"], payload["args"], payload["jid"]) == (
        "Migratio::Migration",
        ["img-1", "site-b"],
        "j" * 24,
    )
    assert answer["work"][1]["payload"]["jid"] == "m-2"
    assert 0 < redis_peer.client.ttl(f"{NS}:host-x:4242:abcdef") <= 60
    process.clear()
    assert sidekiq_api(redis_peer, "processes")["size"] == 0


def test_sidekiq_webs_quiet_stops_the_intake_and_stop_stops_the_daemon(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url, intake_heartbeat_seconds=1.5)
    daemon = migratio_cli.start(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: redis_peer.client.scard(f"{NS}:processes") == 1, what="the heartbeat")
        [identity] = [r.decode() for r in as_bytes(redis_peer.client.smembers(f"{NS}:processes"))]
        redis_peer.client.lpush(f"{NS}:{identity}-signals", "TSTP")  # Process#quiet!
        wait_until(
            lambda: redis_peer.client.hget(f"{NS}:{identity}", "quiet") == b"true",
            what="quiet",
        )
        redis_peer.client.lpush(QUEUE, sidekiq_job(["img-1", "site-b"], jid="q" * 24))
        time.sleep(1.5)
        assert redis_peer.client.llen(QUEUE) == 1 and migration_count(config) == 0
        redis_peer.client.lpush(f"{NS}:{identity}-signals", "TERM")  # Process#stop!
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert redis_peer.client.scard(f"{NS}:processes") == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "signal TSTP from Sidekiq" in log and "signal TERM from Sidekiq" in log


# ---- the Dead set ---------------------------------------------------------------------


def test_a_dead_job_is_in_sidekiqs_dead_set_with_its_reason_and_retry_brings_it_back(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    jid = enqueue(redis_peer, "img-c", "site-c")  # site-c is not configured yet
    redis_peer.client.lpush(QUEUE, b"not json at all")
    migratio_cli.run_until_idle(config, timeout=60)

    dead = {entry["display_class"]: entry for entry in sidekiq_api(redis_peer, "dead")}
    migrator = "Migratio::Worker::OpenstackOpenstackMigrator"
    assert sorted(dead) == ["Migratio::UnreadableJob", migrator]
    job = dead[migrator]
    assert (job["jid"], job["queue"], job["args"], job["retry"]) == (
        jid,
        "migration_site-a",
        ["img-c", "site-c"],
        True,
    )
    assert (job["error_class"], job["error_message"]) == (
        "Migratio::BadJob",
        "unknown destination site 'site-c'",
    )
    assert job["error"] is True and job["retry_count"] == 0
    assert job["failed_at"] == job["score"] and abs(job["failed_at"] - time.time()) < 60
    assert isinstance(job["created_at"], float) and isinstance(job["enqueued_at"], float)
    unreadable = dead["Migratio::UnreadableJob"]
    assert unreadable["error_message"].startswith("not JSON: ")
    assert "not a JSON job: it cannot be retried" in unreadable["error_message"]
    assert unreadable["payload_head"] == "not json at all"

    # The cause is fixed: site-c now exists. Retry in Sidekiq puts both back on the queue.
    (tmp_path / "sites" / "site-c.yml").write_text("type: openstack\ncloud: site-c\n")
    sidekiq_api(redis_peer, "retry-all")
    assert redis_peer.client.llen(QUEUE) == 2
    migratio_cli.run_until_idle(config, timeout=60)

    assert ledger_rows(config, "SELECT image_id, dest_site, job_id FROM migrations") == [
        ("img-c", "site-c", jid)
    ]
    # The stand-in for the unreadable job comes back dead, saying why.
    [again] = sidekiq_api(redis_peer, "dead")
    assert again["display_class"] == "Migratio::UnreadableJob"
    assert again["error_message"].startswith("a stand-in for a dead job that could not be kept")


def test_a_truncated_dead_job_is_not_in_sidekiqs_dead_set_as_if_whole(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    huge = sidekiq_job(["img-h", "nowhere", "x" * 100_000], jid="h" * 24)
    redis_peer.client.lpush(QUEUE, huge)
    migratio_cli.run_until_idle(config, timeout=60)

    [entry] = sidekiq_api(redis_peer, "dead")
    assert entry["class"] == "Migratio::UnreadableJob" and entry["args"] == []
    assert entry["payload_bytes"] == len(huge) and len(entry["payload_head"]) == 200
    assert entry["error_message"] == (
        "expected 2 args [source image uuid, destination site id], got 3 "
        f"(the job has {len(huge)} bytes, of which only the first 64 KiB are kept: "
        "it cannot be retried; see migratio dead list)"
    )
    assert len(redis_peer.client.zrange(DEAD_SET, 0, -1)[0]) < 2048
    [letter] = [json.loads(raw) for raw in redis_peer.client.lrange(DEAD_LIST, 0, -1)]
    assert letter["truncated"] is True and letter["retryable"] is False
    assert len(letter["payload"]) == DEAD_PAYLOAD_BYTES

    listed = json.loads(migratio_cli.cli(config, "dead", "list", "--json").stdout)
    assert [(d["retryable"], d["in_sidekiq"], d["truncated"]) for d in listed] == [
        (False, True, True)
    ]
    refused = migratio_cli.cli(config, "dead", "replay", listed[0]["id"], check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"migratio: dead job {listed[0]['id']} cannot be replayed")


def test_sidekiqs_dead_set_is_trimmed_as_sidekiq_trims_it(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    old = json.dumps({"class": "Other", "args": [], "jid": "o" * 24, "queue": "default"})
    recent = json.dumps({"class": "Other", "args": [], "jid": "r" * 24, "queue": "default"})
    now = time.time()
    redis_peer.client.zadd(
        DEAD_SET, {old: now - SIDEKIQ_DEAD_TIMEOUT_SECONDS - 60, recent: now - 3600}
    )
    config = intake_config(tmp_path, redis_peer.url)
    redis_peer.client.lpush(QUEUE, b'{"class": "nope", "args": []}')
    migratio_cli.run_until_idle(config, timeout=60)
    classes = sorted((entry["class"], entry["jid"]) for entry in sidekiq_api(redis_peer, "dead"))
    assert [name for name, _ in classes] == ["Other", "nope"] and classes[0][1] == "r" * 24


def test_dead_list_replay_and_purge_work_on_migratios_dead_jobs_only(
    tmp_path: Path, redis_peer: PrivateRedis
) -> None:
    config = intake_config(tmp_path, redis_peer.url)
    # Sidekiq's own dead job from another worker: never ours to list or purge.
    foreign = json.dumps({"class": "Atmosphere::Other", "args": [1], "jid": "f" * 24})
    redis_peer.client.zadd(DEAD_SET, {foreign: time.time() - 7200})
    for n, dest in enumerate(("site-c", "site-d", "nowhere")):
        redis_peer.client.lpush(QUEUE, sidekiq_job([f"img-{n}", dest], jid=f"{n}" * 24))
    migratio_cli.run_until_idle(config, timeout=60)

    listed = json.loads(migratio_cli.cli(config, "dead", "list", "--json").stdout)
    assert [(d["jid"], d["reason"], d["retryable"], d["in_sidekiq"]) for d in listed] == [
        ("2" * 24, "unknown destination site 'nowhere'", True, True),
        ("1" * 24, "unknown destination site 'site-d'", True, True),
        ("0" * 24, "unknown destination site 'site-c'", True, True),
    ]
    table = migratio_cli.cli(config, "dead", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "AGE", "SIDEKIQ", "JID", "REASON"]
    assert table[3].split()[2:4] == ["dead", "0" * 24]

    (tmp_path / "sites" / "site-c.yml").write_text("type: openstack\ncloud: site-c\n")
    replayed = migratio_cli.cli(config, "dead", "replay", listed[2]["id"][:6]).stdout.strip()
    assert replayed == "0" * 24
    assert redis_peer.client.llen(QUEUE) == 1
    migratio_cli.run_until_idle(config, timeout=60)
    assert ledger_rows(config, "SELECT image_id, job_id FROM migrations") == [("img-0", "0" * 24)]
    left = json.loads(migratio_cli.cli(config, "dead", "list", "--json").stdout)
    assert [d["id"] for d in left] == [listed[0]["id"], listed[1]["id"]]

    # Retried from Sidekiq, a job leaves its Dead set: the list says it is gone from there.
    sidekiq_api(redis_peer, "retry", "1" * 24)
    gone = json.loads(migratio_cli.cli(config, "dead", "list", "--json").stdout)
    assert [(d["jid"], d["in_sidekiq"]) for d in gone] == [("2" * 24, True), ("1" * 24, False)]
    redis_peer.client.delete(QUEUE)

    assert migratio_cli.cli(config, "dead", "purge", "--older-than", "1h").stdout == (
        "0 dead jobs purged\n"
    )
    assert migratio_cli.cli(config, "dead", "purge").stdout == "2 dead jobs purged\n"
    assert json.loads(migratio_cli.cli(config, "dead", "list", "--json").stdout) == []
    assert [entry["jid"] for entry in sidekiq_api(redis_peer, "dead")] == ["f" * 24]
    bad_age = migratio_cli.cli(config, "dead", "purge", "--older-than", "soon", check=False)
    assert bad_age.returncode == 2 and "not an age like" in bad_age.stderr


def test_dead_commands_say_in_one_line_when_redis_is_away(tmp_path: Path) -> None:
    config = intake_config(tmp_path, f"redis://127.0.0.1:{_closed_port()}/0")
    result = migratio_cli.cli(config, "dead", "list", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("migratio: redis at redis://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
