"""Benchmark: jobs per second from Redis into the ledger, on SQLite and PostgreSQL.

A real ``migratio run`` daemon (``migrate: false``: intake and feedback only,
feedback on, so every job also writes its ``Migration started`` outbox row in
the same transaction) consumes N Sidekiq jobs from a private Redis. The clock
starts when the first job is pushed and stops when the ledger holds all N.
For scale, the same run measures a bare consumer: the same moves and
acknowledgements against the same Redis with no ledger at all. With
``--prefill N`` the ledger already holds N migrations (every state, as
bench/ledger_cost.py fills it) before the jobs arrive: how intake slows as the
ledger grows.

    python3 bench/intake_rate.py [--jobs 5000] [--rounds 2] [--batch 50] [--prefill N] [--tiny]

PostgreSQL: $MIGRATIO_TEST_POSTGRES_URL, else a private cluster (testbed_lib).
Goal: at least 500 jobs/s on both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402
from testbed_lib import processes, redis_server  # noqa: E402
from testbed_lib.ports import free_ports  # noqa: E402

from bench.ledger_cost import fill  # noqa: E402
from bench.rounds import emit  # noqa: E402
from migratio.intake.reliable_queue import ReliableQueue  # noqa: E402
from migratio.ledger.database import make_engine  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.redis_peer import sidekiq_job  # noqa: E402

QUEUE = "atmosphere:queue:migration_site-a"


def payloads(count: int, tag: str) -> list[bytes]:
    return [sidekiq_job([f"{tag}-{n:06d}", "site-b"], jid=f"{n:024x}") for n in range(count)]


def daemon_rate(
    workdir: Path,
    redis_url: str,
    ledger_url: str,
    jobs: int,
    batch: int,
    tag: str,
    prefill: int = 0,
) -> float:
    """Jobs/s of a real daemon from first push to the last job in the ledger."""
    workdir.mkdir(parents=True)
    sites = workdir / "sites"
    sites.mkdir()
    for site in ("site-a", "site-b"):
        (sites / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    config = write_daemon_config(
        workdir,
        sites,
        redis_url=redis_url,
        database_url=ledger_url,
        migrate=False,
        intake_batch=batch,
        log_level="WARNING",
    )
    url = ledger_url if ledger_url else f"sqlite:///{workdir / 'work/ledger.sqlite'}"
    fill(url, prefill)  # a fresh ledger at the newest schema, with ``prefill`` migrations
    engine = make_engine(url)
    client = redis.Redis.from_url(redis_url)
    log = workdir / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "migratio", "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Ready once its consumer's heartbeat is in Redis.
        deadline = time.monotonic() + 60
        while not list(client.scan_iter(match="atmosphere:migratio:heartbeat:*")):
            assert time.monotonic() < deadline, f"daemon not ready; read {log}"
            time.sleep(0.05)
        batch_of_jobs = payloads(jobs, tag)
        started = time.monotonic()
        with client.pipeline(transaction=False) as pipe:
            for raw in batch_of_jobs:
                pipe.lpush(QUEUE, raw)
            pipe.execute()
        with engine.connect() as connection:
            while True:
                count = connection.execute(text("SELECT count(*) FROM migrations")).scalar_one()
                connection.rollback()
                if count >= prefill + jobs:
                    break
                assert time.monotonic() - started < 120, f"stuck at {count}; read {log}"
                time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        client.close()
        engine.dispose()
    return jobs / elapsed


def bare_rate(redis_url: str, jobs: int, batch: int) -> float:
    """The same moves and acknowledgements with no ledger: the Redis side's ceiling."""
    client = redis.Redis.from_url(redis_url)
    queue = ReliableQueue(
        client,
        namespace="atmosphere",
        queue="migration_site-a",
        consumer="bare",
        heartbeat_seconds=30,
    )
    with client.pipeline(transaction=False) as pipe:
        for raw in payloads(jobs, "bare"):
            pipe.lpush(QUEUE, raw)
        pipe.execute()
    started = time.monotonic()
    done = 0
    while done < jobs:
        taken = queue.take(batch, 0)
        for raw in taken:
            json.loads(raw)
        queue.ack(taken)
        done += len(taken)
    elapsed = time.monotonic() - started
    client.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50, help="intake_batch of the daemon")
    parser.add_argument("--prefill", type=int, default=0, metavar="N")
    parser.add_argument("--keep", type=Path, help="work in this (new) dir and keep it (logs)")
    parser.add_argument("--tiny", action="store_true", help="100 jobs, 1 round, --batch only (CI)")
    args = parser.parse_args()
    # Each daemon start costs seconds: a tiny run skips the batch-1 comparison.
    batches = (args.batch,) if args.tiny else (args.batch, 1)
    if args.tiny:
        args.jobs, args.rounds = 100, 1
    with tempfile.TemporaryDirectory(prefix="migratio-intake-bench-") as scratch:
        scratch_dir = Path(args.keep or scratch).resolve()
        layout = redis_server.RedisLayout(scratch_dir / "redis", scratch_dir, free_ports(1)[0])
        server = redis_server.start_redis(layout, mark=str(scratch_dir))
        pg_url = os.environ.get("MIGRATIO_TEST_POSTGRES_URL")
        own_pg = pg_url is None
        if pg_url is None:
            pg_url = testbed_lib.start_postgres(scratch_dir / "pg")
        try:
            results: dict[str, list[float]] = {}
            for round_number in range(args.rounds):
                for name, url in (("sqlite", ""), ("postgresql", pg_url)):
                    for batch in batches:
                        rate = daemon_rate(
                            scratch_dir / f"{name}-b{batch}-r{round_number}",
                            layout.url,
                            url,
                            args.jobs,
                            batch,
                            f"{name[0]}{batch}r{round_number}",
                            args.prefill,
                        )
                        results.setdefault(f"{name} batch {batch}", []).append(rate)
                        emit(
                            "intake_rate",
                            ledger=name,
                            batch=batch,
                            jobs=args.jobs,
                            prefill=args.prefill,
                            round=round_number,
                            jobs_per_s=rate,
                        )
                bare = bare_rate(layout.url, args.jobs, args.batch)
                results.setdefault(f"bare redis batch {args.batch}", []).append(bare)
                emit(
                    "intake_rate",
                    ledger=None,
                    batch=args.batch,
                    jobs=args.jobs,
                    prefill=args.prefill,
                    round=round_number,
                    jobs_per_s=bare,
                )
            print(
                f"{args.jobs} jobs per run, ledger prefilled with {args.prefill:,}, "
                f"{args.rounds} rounds; jobs/s (best of rounds):"
            )
            for label, rates in results.items():
                every = ", ".join(f"{rate:.0f}" for rate in rates)
                print(f"  {label:26} {max(rates):8.0f}   (all: {every})")
        finally:
            processes.stop([server])
            if own_pg:
                testbed_lib.stop_postgres(scratch_dir / "pg")


if __name__ == "__main__":
    main()
