"""Hostile inputs (reliability row R4): one long-running daemon on the test bed
takes every bad input we know of, in one go, and must answer each with one clear
line while it stays up.

The inputs: Redis jobs (not JSON, wrong types, huge, control characters, unknown
class or site, source == destination, missing image), images (backing file,
external data file, VMDK extents on host files, declared format that lies,
truncated, zero bytes, bit rot in the source's store, queued, deactivated,
killed, an ISO where a disk is needed), names and properties (shell
metacharacters, newlines, long values, non-ASCII: these must arrive unchanged),
daemon configs and CLI arguments (one line, exit 2).

Per case: the line it produced (dead letter, ledger error, CLI stderr) starts with
what the case expects and is one line. For the whole suite: the daemon's pid never
changed and it exits 0 on SIGTERM, every job is in the ledger or the dead set
exactly once, the feedback names each failure once, nothing is left in Redis's
queues, the work dir, or Glance (no queued/saving records, no copy of a refused
image). The daemon logs at DEBUG (libraries too) under a Redis with a password:
what it wrote is left for the secrets grep (R6) at the end of the session.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection
from testbed_lib import pidfile

from tests.support import aws_peer, glance_peer, migratio_cli, secrets_grep
from tests.support.child_argv import ChildArgvSampler
from tests.support.daemon_config import write_daemon_config
from tests.support.hostile.case import PWNED, Bed, Case, good_job, job_id_of
from tests.support.hostile.command_cases import cli_cases, config_cases
from tests.support.hostile.data_cases import image_cases, job_cases, name_cases
from tests.support.redis_peer import PrivateRedis
from tests.support.reliability import record

pytestmark = pytest.mark.reliability

NS = "atmosphere"
QUEUE = f"{NS}:queue:migration_site-a"
DEAD = f"{NS}:migratio:dead"
FEEDBACK = f"{NS}:queue:feedback"
SUITE_TIMEOUT = 150.0


def all_cases() -> list[Case]:
    return [*job_cases(), *image_cases(), *name_cases(), *config_cases(), *cli_cases()]


# ---- the daemon and the checks ------------------------------------------------------


@dataclass
class Outcome:
    """What a case produced: its line (or ``done``), and what went wrong with it."""

    line: str = ""
    problems: list[str] = field(default_factory=list)


@pytest.fixture
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture
def locked_redis(suite_dir: Path) -> Iterator[PrivateRedis]:
    """The suite's Redis wants a password: the secrets grep then has one to look for."""
    password = secrets.token_urlsafe(18)
    secrets_grep.remember("the hostile suite's Redis requirepass", password)
    peer = PrivateRedis(suite_dir / "redis", password=password).start()
    yield peer
    peer.stop()


def suite_config(directory: Path, bed_sites: Path, redis_url: str) -> Path:
    sites = directory / "sites"
    sites.mkdir()
    # A short read timeout: an image cut short in Glance's store makes Glance
    # promise more bytes than it sends, and only a timeout ends that read.
    (sites / "site-a.yml").write_text(
        yaml.safe_dump({"type": "openstack", "cloud": "site-a", "read_timeout": 2})
    )
    for name in ("site-b.yml", "site-b-raw.yml", "site-b-ssh.yml", "aws-a.yml"):
        shutil.copy(bed_sites / name, sites / name)
    return write_daemon_config(
        directory,
        sites,
        redis_url=redis_url,
        concurrency=6,
        log_level_libraries="DEBUG",
        retry={"max_attempts": 2, "base_delay": 0.2, "max_delay": 0.5},
    )


def ledger_rows(config: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config.parent / "work" / "ledger.sqlite", timeout=30) as db:
        return [tuple(row) for row in db.execute(query, args)]


def migrations_by_job(config: Path) -> dict[str, tuple[Any, ...]]:
    """job id -> (migration id, state, last_error, dest_image_id, image_id)."""
    try:
        rows = ledger_rows(
            config,
            "SELECT j.job_id, m.id, m.state, m.last_error, m.dest_image_id, m.image_id "
            "FROM jobs j JOIN migrations m ON m.id = j.migration_id",
        )
    except sqlite3.OperationalError:  # the daemon has not made its ledger yet
        return {}
    return {row[0]: row[1:] for row in rows}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def one_line_problems(line: str, expect: str) -> list[str]:
    problems = []
    if not re.match(expect, line):
        problems.append(f"expected a line matching {expect!r}, got {line[:300]!r}")
    if "\n" in line or "\r" in line:
        problems.append(f"more than one line: {line[:300]!r}")
    if len(line) > 2000:
        problems.append(f"a line of {len(line)} characters")
    return problems


def run_cli_case(case: Case, suite_config_path: Path, scratch: Path) -> Outcome:
    argv: tuple[str, ...]
    if case.config is not None:
        config = case.config(scratch / case.id)
        argv = ("run", "--until-idle")
    else:
        config, argv = suite_config_path, case.argv
    result = migratio_cli.cli(config, *argv, check=False, timeout=60)
    lines = result.stderr.splitlines()
    line = lines[0].removeprefix("migratio: ") if lines else ""
    outcome = Outcome(line, one_line_problems(line, case.expect))
    if len(lines) != 1:
        outcome.problems.append(f"{len(lines)} lines on stderr: {result.stderr[:500]!r}")
    if result.returncode != 2:
        outcome.problems.append(f"exit {result.returncode}, not 2")
    if case.config is not None and (scratch / case.id / "work").exists():
        outcome.problems.append("a refused config still made its work dir")
    return outcome


def dead_letters(peer: PrivateRedis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(peer.client.lrange(DEAD, 0, -1))]


def failure_feedback(peer: PrivateRedis) -> list[tuple[str, str]]:
    """(image id, destination) of each "Migration failed" feedback job."""
    jobs = [json.loads(raw)["args"] for raw in peer.client.lrange(FEEDBACK, 0, -1)]
    return [(args[0], args[2]) for args in jobs if str(args[3]).startswith("Migration failed")]


def image_ids(conn: Connection) -> dict[str, str]:
    return {str(image.id): str(image.status) for image in conn.image.images()}


def test_every_hostile_input_gets_one_clear_line_and_the_daemon_stays_up(
    testbed: Any,
    site_a: Connection,
    site_b: Connection,
    suite_dir: Path,
    locked_redis: PrivateRedis,
) -> None:
    started = time.monotonic()
    cases = all_cases()
    assert len({case.id for case in cases}) == len(cases)
    config = suite_config(suite_dir, testbed.sites_dir, locked_redis.url)
    scratch = suite_dir / "scratch"
    scratch.mkdir()
    bed = Bed(site_a, site_b, testbed.dir / "glance-site-a", scratch)
    staging = Path(
        yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())["staging_dir"]
    )
    staged_before = set(staging.rglob("*")) if staging.exists() else set()
    dest_before = image_ids(site_b)
    PWNED.unlink(missing_ok=True)
    outcomes: dict[str, Outcome] = {}

    daemon = migratio_cli.start(config, suite_dir / "daemon.log")
    pid = daemon.pid
    try:
        sshd = [server.pid for server in pidfile.load(testbed.dir) if server.name == "sshd"]
        with ChildArgvSampler([pid, *sshd], suite_dir / "child-argv.txt") as sampler:
            # Jobs first, oldest first: the dead set keeps the order they were taken in.
            dead_cases = [case for case in cases if case.category == "job" and not case.make]
            for case in dead_cases:
                locked_redis.client.lpush(QUEUE, case.payload)
            # Images and names: uploaded to site-a, then one good job each.
            # The slowest first (the SSH destination, reads that must time out).
            ledger_cases = sorted(
                (case for case in cases if case.make is not None),
                key=lambda case: (case.dest != "site-b-ssh", "in-store" not in case.id),
            )
            with ThreadPoolExecutor(4) as pool:
                sources = dict(
                    zip(
                        [case.id for case in ledger_cases],
                        pool.map(lambda case: make_source(case, bed), ledger_cases),
                        strict=True,
                    )
                )
            for case in ledger_cases:
                if case.then is not None:
                    case.then(bed, sources[case.id])
            for case in ledger_cases:
                locked_redis.client.lpush(QUEUE, good_job(sources[case.id], case.dest, case.id))
            # Configs and command lines meanwhile, against the running daemon's config.
            command_cases = [case for case in cases if case.category in ("config", "cli")]
            with ThreadPoolExecutor(3) as pool:
                for case, outcome in zip(
                    command_cases,
                    pool.map(lambda case: run_cli_case(case, config, scratch), command_cases),
                    strict=True,
                ):
                    outcomes[case.id] = outcome
            assert daemon.poll() is None, "the daemon exited"

            remaining = SUITE_TIMEOUT - (time.monotonic() - started)
            wait_until(
                lambda: locked_redis.client.llen(DEAD) >= len(dead_cases),
                remaining,
                "the dead letters",
            )

            def settled() -> bool:
                found = migrations_by_job(config)
                return all(
                    job_id_of(case.id) in found
                    and found[job_id_of(case.id)][1] in ("done", "failed")
                    for case in ledger_cases
                )

            wait_until(settled, SUITE_TIMEOUT - (time.monotonic() - started), "every migration")
            wait_until(
                lambda: (
                    not ledger_rows(
                        config, "SELECT id FROM feedback_outbox WHERE delivered_at IS NULL"
                    )
                ),
                30,
                "the feedback",
            )
            assert daemon.poll() is None and daemon.pid == pid, "the daemon exited"
    finally:
        # A daemon that exited (and so was not the same process) counts as a restart.
        restarts = 0 if daemon.poll() is None and daemon.pid == pid else 1
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(60)
    log = (suite_dir / "daemon.log").read_text(errors="backslashreplace")

    # ---- each case: its line ----
    letters = dead_letters(locked_redis)
    for case, letter in zip(dead_cases, letters, strict=False):
        outcome = Outcome(letter["reason"], one_line_problems(letter["reason"], case.expect))
        shown = case.payload[:64].decode("utf-8", errors="backslashreplace")
        if not letter["payload"].startswith(shown):
            outcome.problems.append(f"dead letter of another payload: {letter['payload'][:64]!r}")
        outcomes[case.id] = outcome
    found = migrations_by_job(config)
    feedback = failure_feedback(locked_redis)
    destination_copies: set[str] = set()
    amis: list[str] = []
    for case in ledger_cases:
        migration_id, state, error, dest_image_id, image_id = found[job_id_of(case.id)]
        if case.expect == "done":
            outcome = Outcome(state, [] if state == "done" else [f"{state}: {error}"])
            if state == "done" and case.dest == "aws-a":
                amis.append(dest_image_id)
            elif state == "done":
                destination_copies.add(dest_image_id)
                outcome.problems += arrived_unchanged(site_a, site_b, image_id, dest_image_id)
        else:
            outcome = Outcome(error or "", one_line_problems(error or "", case.expect))
            if state != "failed":
                outcome.problems.append(f"ended {state}, not failed")
            audit = ledger_rows(
                config,
                "SELECT message FROM transitions WHERE migration_id = ? AND to_state = 'failed'",
                migration_id,
            )
            if audit != [(error,)]:
                outcome.problems.append(f"the audit trail's failures: {audit}")
            if feedback.count((image_id, case.dest)) != 1:
                outcome.problems.append("not told to Atmosphere exactly once")
            present = ledger_rows(
                config,
                "SELECT kind, ref FROM artifacts WHERE migration_id = ? AND status = 'present'",
                migration_id,
            )
            if present:
                outcome.problems.append(f"artifacts left: {present}")
        outcomes[case.id] = outcome

    # ---- the whole suite ----
    suite_problems: list[str] = []
    if restarts or exit_code != 0:
        suite_problems.append(f"the daemon exited {exit_code} (restarts {restarts})")
    if len(letters) != len(dead_cases):
        suite_problems.append(f"{len(letters)} dead letters for {len(dead_cases)} bad jobs")
    if len(ledger_rows(config, "SELECT id FROM migrations")) != len(ledger_cases):
        suite_problems.append("migrations other than one per good job (a CLI case made one?)")
    if locked_redis.client.llen(QUEUE) or list(
        locked_redis.client.scan_iter(match=f"{NS}:migratio:processing:*")
    ):
        suite_problems.append("jobs left in the queue or a processing list")
    for marker in ("Traceback", "unexpected error", "internal error"):
        if marker in log:
            suite_problems.append(f"{marker!r} in the daemon's log")
    leftovers = [
        p
        for p in (config.parent / "work").rglob("*")
        if p.is_file() and "ledger.sqlite" not in p.name
    ]
    leaked = [f"work dir: {p}" for p in leftovers]
    for image_id, status in image_ids(site_b).items():
        if image_id in dest_before:
            continue
        if status != "active" or image_id not in destination_copies:
            leaked.append(f"site-b image {image_id} ({status}) is no copy of a done case")
    staged_after = set(staging.rglob("*")) if staging.exists() else set()
    leaked += [f"ssh staging: {p}" for p in staged_after - staged_before if p.is_file()]
    if PWNED.exists():
        suite_problems.append(f"a shell ran a hostile name: {PWNED} exists")

    clear = [case.id for case in cases if case.id in outcomes and not outcomes[case.id].problems]
    record(
        "R4",
        "hostile inputs",
        tried=len(cases),
        clear_errors=len(clear),
        daemon_restarts=restarts,
        leaked=len(leaked),
        by_category={c: sum(case.category == c for case in cases) for c in CATEGORIES},
        child_argv_seen=sampler.children_seen,
        seconds=round(time.monotonic() - started, 1),
    )
    keep_for_the_secrets_grep(locked_redis, suite_dir)
    tidy(site_a, site_b, bed.created, destination_copies)
    remove_amis(testbed.moto_url, amis)

    report = [
        f"{case.id}: {problem}"
        for case in cases
        for problem in outcomes.get(case.id, Outcome("", ["no outcome"])).problems
    ]
    assert not report + suite_problems + leaked, "\n".join(report + suite_problems + leaked)
    assert len(cases) >= 40


CATEGORIES = ("job", "image", "name", "config", "cli")


def arrived_unchanged(
    site_a: Connection, site_b: Connection, source_id: str, dest_id: str
) -> list[str]:
    source = glance_peer.get(site_a, source_id) or {}
    copy = glance_peer.get(site_b, dest_id) or {}
    problems = []
    if copy.get("name") != source.get("name"):
        problems.append(f"name {source.get('name')!r} arrived as {copy.get('name')!r}")
    for key, value in source.items():
        if key.startswith("os_r4_") and copy.get(key) != value:
            problems.append(f"property {key} arrived as {str(copy.get(key))[:80]!r}")
    if copy.get("os_hash_value") != source.get("os_hash_value"):
        problems.append("the bytes differ")
    return problems


def make_source(case: Case, bed: Bed) -> str:
    """The case's source image, made in a scratch dir of its own (cases run in threads)."""
    assert case.make is not None, case.id
    own = replace(bed, scratch=bed.scratch / case.id)
    own.scratch.mkdir()
    return case.make(own)


def remove_amis(moto_url: str, amis: list[str]) -> None:
    """The AMI and its snapshot: other tests count what the bed's moto holds."""
    ec2 = aws_peer.client("ec2", moto_url)
    for ami in amis:
        described = ec2.describe_images(ImageIds=[ami])["Images"]
        ec2.deregister_image(ImageId=ami)
        for image in described:
            for mapping in image.get("BlockDeviceMappings", []):
                if snapshot := mapping.get("Ebs", {}).get("SnapshotId"):
                    ec2.delete_snapshot(SnapshotId=snapshot)


def keep_for_the_secrets_grep(peer: PrivateRedis, directory: Path) -> None:
    """This Redis goes when the test ends; its keys and values stay in a file the
    session's secrets grep reads."""
    client: Any = peer.client
    lines: list[bytes] = []
    values: list[bytes]
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == b"zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            values = list(client.smembers(key))
        else:
            values = [client.get(key) or b""]
        lines.append(bytes(key) + b"\n" + b"\n".join(values))
    (directory / "redis-dump.txt").write_bytes(b"\n".join(lines))


def tidy(site_a: Connection, site_b: Connection, sources: list[str], copies: set[str]) -> None:
    """Remove this suite's images: the bed is shared by the whole session."""
    with ThreadPoolExecutor(4) as pool:
        done = [pool.submit(glance_peer.delete, site_a, image_id) for image_id in sources]
        done += [pool.submit(glance_peer.delete, site_b, image_id) for image_id in copies]
    for future in done:
        future.result()
