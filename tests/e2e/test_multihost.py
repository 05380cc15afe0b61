"""Three daemons on three "hosts" (network and UTS namespaces, tests/support/hosts.py)
share one PostgreSQL ledger and migrate small images between the bed's two real
Glance sites, while one daemon at a time is SIGKILLed and restarted at random.

What must hold (reliability row R5): every migration ends done, executed once
(each state's work committed once, by the owner that held it; a new owner only
after a take-over or a retry) with exactly one destination image holding the
source's bytes, and every lease the killed daemon held is taken over within
``lease_seconds`` + one heartbeat of its last renewal.

How it is run, and why: migrations are submitted one at a time (as templates
arrive), to daemons with spare workers, so that a take-over times the lease and
not a queue; and one daemon is down at a time (the next kill waits for the last
replacement to be up: a daemon takes seconds to start on a busy machine, and
with all three down nobody can take over). A take-over is timed from the dead
owner's last renewal (its lease expiry, read right after the kill, less
``lease_seconds``) to the take-over note in the audit trail.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import testbed_lib
from openstack.connection import Connection
from sqlalchemy import select
from sqlalchemy.engine import make_url

from migratio import operations
from migratio.config import Settings, load_settings
from migratio.ledger.database import upgrade
from migratio.ledger.models import MigrationRow
from migratio.ledger.store import Ledger, Transition, utcnow
from tests.support import glance_peer, reliability
from tests.support.daemon_config import write_daemon_config
from tests.support.hosts import Host, Hosts, hosts
from tests.support.ledgers import empty_ledger_engine

pytestmark = [pytest.mark.testbed, pytest.mark.postgres, pytest.mark.reliability]

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 4.0
HEARTBEAT_SECONDS = LEASE_SECONDS / 3  # the supervisor renews every lease_seconds / 3
# On top of lease + heartbeat: the claim loop's poll and a busy CI machine.
TAKEOVER_SLACK_SECONDS = 2.0
IMAGE_KIB = 320
STARTED = "starting (concurrency"  # the supervisor's first line, after the signal handlers
HAPPY = [
    (None, "queued"),
    ("queued", "exporting"),
    ("exporting", "converting"),
    ("converting", "uploading"),
    ("uploading", "registering"),
    ("registering", "done"),
]


@dataclass
class Kill:
    """One SIGKILL: whose, when, and the leases the dead daemon held then."""

    host: str
    pid: int
    at: datetime
    held: dict[str, datetime] = field(default_factory=dict)  # migration -> lease expiry


@dataclass
class Daemon:
    host: Host
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where the current process's lines begin

    @property
    def log(self) -> Path:
        return self.config.parent / "migratio.log"

    def start(self) -> None:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.host.migratio("--config", str(self.config), "run"),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def kill(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        return self.process.pid

    def ready(self) -> bool:
        """The current process got as far as its supervisor's first line."""
        if self.process is None or self.process.poll() is not None:
            return False
        with self.log.open("rb") as lines:
            lines.seek(self.log_offset)
            return STARTED.encode() in lines.read()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, once the last start got as far as handling it (a daemon still
        importing would die of it): the exit status says whether it stopped cleanly."""
        if self.process is None:
            return None
        self.wait_ready(60)
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            return None


def _raw_disk(seed: int) -> bytes:
    """A small raw disk: a zeroed first sector (nothing to mistake for a header),
    then bytes unique to this image (so no two sources dedup into one copy)."""
    rng = random.Random(seed)
    return bytes(4096) + rng.randbytes(IMAGE_KIB * 1024 - 4096)


def _upload_sources(site_a: Connection, directory: Path, count: int) -> dict[str, str]:
    """``count`` distinct raw images on site-a: id -> sha512."""
    import hashlib

    def one(n: int) -> tuple[str, str]:
        data = _raw_disk(n * 7919 + os.getpid())
        path = directory / f"disk{n}.raw"
        path.write_bytes(data)
        image_id = glance_peer.upload(site_a, path, name=f"multihost-{n}", disk_format="raw")
        path.unlink()
        return image_id, hashlib.sha512(data).hexdigest()

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, range(count)))


def _peer_ports(testbed: testbed_lib.Bed, postgres_url: str) -> list[int]:
    urls = [testbed.keystone_url, *testbed.glance_urls.values()]
    ports = [urlsplit(url).port for url in urls]
    ports.append(make_url(postgres_url).port or 5432)
    assert all(ports), ports
    return [int(port) for port in ports if port]


@pytest.fixture
def three_hosts(testbed: testbed_lib.Bed, postgres_url: str, tmp_path: Path) -> Iterator[Hosts]:
    with hosts(3, _peer_ports(testbed, postgres_url), tmp_path) as made:
        yield made


def _held_by(ledger: Ledger, host: str, pid: int) -> dict[str, datetime]:
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(MigrationRow.id, MigrationRow.lease_expires_at).where(
                MigrationRow.lease_owner.like(f"{host}:{pid}:%")
            )
        ).all()
    return {row.id: row.lease_expires_at for row in rows}


def _chaos(
    daemons: list[Daemon],
    ledger: Ledger,
    kill_every: float,
    deadline: float,
    submitting: Callable[[], bool],
) -> list[Kill]:
    """Kill and restart one daemon at random every ``kill_every`` s (± half) until
    everything submitted has ended, or ``deadline``. One at a time: the next kill
    waits until the last one's replacement is up (starting takes seconds on a
    busy machine), so two daemons are always there to take over."""
    kills: list[Kill] = []
    chooser = random.Random(os.getpid())
    while time.monotonic() < deadline:
        for daemon in daemons:
            daemon.wait_ready(max(0.0, deadline - time.monotonic()))
        time.sleep(kill_every * chooser.uniform(0.5, 1.5))
        if not submitting() and ledger.count_active() == 0:
            break
        victim = chooser.choice(daemons)
        pid = victim.kill()
        kill = Kill(victim.host.hostname, pid, utcnow())
        kill.held = _held_by(ledger, kill.host, pid)
        kills.append(kill)
        victim.start()
    return kills


class Submitter(threading.Thread):
    """Submits one migration per source every ``interval`` s, as templates arrive
    over a day (not all at once: a take-over then finds a free worker, and what is
    timed is the lease, not the queue)."""

    def __init__(self, settings: Settings, ledger: Ledger, sources: list[str], interval: float):
        super().__init__(name="submitter", daemon=True)
        self.settings, self.ledger, self.sources, self.interval = (
            settings,
            ledger,
            sources,
            interval,
        )
        self.ids: list[str] = []

    def run(self) -> None:
        for source in self.sources:
            migration = operations.submit(self.settings, self.ledger, source, "site-a", "site-b")
            self.ids.append(migration.id)
            time.sleep(self.interval)


def _wait_all_ended(ledger: Ledger, deadline: float) -> None:
    while time.monotonic() < deadline and ledger.count_active():
        time.sleep(0.2)


def _state_changes(history: list[Transition]) -> list[tuple[str | None, str]]:
    return [(row.from_state, row.to_state) for row in history if row.from_state != row.to_state]


def _handed_over_silently(history: list[Transition]) -> int:
    """State changes committed by another process than the previous one with no
    take-over or retry note between them: work entered by two owners at once."""
    silent = 0
    last_writer: tuple[str, int] | None = None
    handed_over = False
    for row in history:
        if row.from_state is None:  # created by whoever submitted it
            continue
        if row.from_state == row.to_state:
            handed_over |= row.message.startswith(("taken over from", "attempt "))
            continue
        writer = (row.host, row.pid)
        if last_writer is not None and writer != last_writer and not handed_over:
            silent += 1
        last_writer, handed_over = writer, False
    return silent


@dataclass
class Takeover:
    """One lease of a killed daemon taken over: seconds from the dead owner's last
    renewal (and from the lease's expiry) to the take-over note."""

    since_renewal: float
    since_expiry: float
    migration: str = ""
    victim: str = ""
    taker: str = ""


def _takeovers(kills: list[Kill], ledger: Ledger) -> tuple[list[Takeover], list[str]]:
    """The take-over of every lease a killed daemon held; and those never taken over."""
    found: list[Takeover] = []
    missing: list[str] = []
    for kill in kills:
        for migration_id, expires in kill.held.items():
            taken_over = f"taken over from {kill.host}:{kill.pid}:"
            notes = [r for r in ledger.history(migration_id) if r.message.startswith(taken_over)]
            if not notes:
                missing.append(migration_id)
                continue
            after_expiry = (notes[0].at - expires).total_seconds()
            taker = f"{notes[0].host}:{notes[0].pid}@{notes[0].at.time()}"
            found.append(
                Takeover(
                    after_expiry + LEASE_SECONDS,
                    after_expiry,
                    migration_id,
                    f"{kill.host}:{kill.pid} killed {kill.at.time()} expiry {expires.time()}",
                    taker,
                )
            )
    return found, missing


def _destination_images(site_b: Connection, ids: set[str]) -> dict[str, list[dict[str, object]]]:
    by_migration: dict[str, list[dict[str, object]]] = {}
    for image in glance_peer.find(site_b):
        owner = image.get("migratio_migration_id")
        if owner in ids:
            by_migration.setdefault(str(owner), []).append(image)
    return by_migration


def _run(
    *,
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    postgres_url: str,
    site_a: Connection,
    site_b: Connection,
    made: Hosts,
    count: int,
    interval: float,
    kill_every: float,
    budget: float,
) -> None:
    started = time.monotonic()
    engine = empty_ledger_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    sources = _upload_sources(site_a, tmp_path, count)
    daemons = []
    for host in made.hosts:
        directory = tmp_path / host.name
        directory.mkdir()
        config = write_daemon_config(
            directory,
            testbed.dir / "sites",
            database_url=postgres_url,
            concurrency=4,  # headroom: a take-over finds a free worker
            lease_seconds=LEASE_SECONDS,
            poll_seconds=0.2,
            intake=False,
            feedback=False,
            retry={"max_attempts": 20, "base_delay": 0.2, "max_delay": 1.0},
        )
        daemons.append(Daemon(host, config))
    ledger = Ledger.open(postgres_url, migrate=False)
    settings = load_settings(daemons[0].config)
    submitter = Submitter(settings, ledger, list(sources), interval)
    try:
        for daemon in daemons:
            daemon.start()
        submitter.start()
        deadline = time.monotonic() + budget
        kills = _chaos(daemons, ledger, kill_every, deadline, submitter.is_alive)
        submitter.join(60)
        _wait_all_ended(ledger, deadline + 60)
    finally:
        exits = [daemon.stop() for daemon in daemons]
    ids = submitter.ids
    assert len(ids) == count
    wall = time.monotonic() - started
    assert exits == [0, 0, 0]

    migrations = {migration_id: ledger.get(migration_id) for migration_id in ids}
    stuck = [m.id for m in migrations.values() if m.state != "done"]
    copies = _destination_images(site_b, set(ids))
    twice = []
    silent = 0
    writers = {row.host for i in ids for row in ledger.history(i) if row.from_state is not None}
    for (migration_id, migration), sha512 in zip(migrations.items(), sources.values(), strict=True):
        history = ledger.history(migration_id)
        silent += _handed_over_silently(history)
        images = copies.get(migration_id, [])
        if _state_changes(history) != HAPPY or len(images) != 1:
            twice.append(migration_id)
            continue
        [image] = images
        assert image["id"] == migration.dest_image_id and image["status"] == "active"
        assert image["os_hash_value"] == sha512, migration_id
    takeovers, missing = _takeovers(kills, ledger)
    times = [t.since_renewal for t in takeovers]
    max_takeover = round(max(times, default=0.0), 2)
    bound = LEASE_SECONDS + HEARTBEAT_SECONDS
    reliability.record(
        "R5",
        f"3 daemons \N{MULTIPLICATION SIGN} {count} migrations (one every {interval:g}s), "
        f"kills every {kill_every:g}s",
        executed_twice=len(twice),
        stuck=len(stuck),
        max_takeover_s=max_takeover,
        lease_seconds=LEASE_SECONDS,
        heartbeat_s=round(HEARTBEAT_SECONDS, 2),
        kills=len(kills),
        takeovers=len(times),
        over_bound=sum(t > bound for t in times),
        max_after_expiry_s=round(max((t.since_expiry for t in takeovers), default=0.0), 2),
        namespaces=made.namespaces,
        wall_s=round(wall, 1),
    )
    for late in (t for t in takeovers if t.since_renewal > bound):
        print(f"late take-over: {late}")
    print(
        f"R5: {count} migrations, {len(kills)} kills, {len(times)} take-overs, max take-over "
        f"{max_takeover} s (lease {LEASE_SECONDS} s + heartbeat {HEARTBEAT_SECONDS:.2f} s), "
        f"namespaces {made.namespaces} {made.why_not}, wall {wall:.1f} s"
    )
    _remove_images(site_a, site_b, sources, copies)

    assert stuck == [], f"not done: {[(i, migrations[i].state) for i in stuck]}"
    assert twice == []
    assert silent == 0
    assert missing == [], f"leases of killed daemons never taken over: {missing}"
    assert kills, "the run ended before any daemon was killed"
    if made.namespaces:  # the work was shared, each host under its own name
        assert len(writers) >= 2 and writers <= {host.name for host in made.hosts}, writers
    assert max_takeover <= bound + TAKEOVER_SLACK_SECONDS, sorted(times)


def _remove_images(
    site_a: Connection,
    site_b: Connection,
    sources: dict[str, str],
    copies: dict[str, list[dict[str, object]]],
) -> None:
    """Keep the session's bed small: the sources and copies go."""
    work = [(site_a, s) for s in sources] + [
        (site_b, str(image["id"])) for images in copies.values() for image in images
    ]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: glance_peer.delete(*item), work))


def test_three_hosts_share_a_ledger_through_kills_and_restarts_quick(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    postgres_url: str,
    site_a: Connection,
    site_b: Connection,
    three_hosts: Hosts,
) -> None:
    _run(
        testbed=testbed,
        tmp_path=tmp_path,
        postgres_url=postgres_url,
        site_a=site_a,
        site_b=site_b,
        made=three_hosts,
        count=30,
        interval=0.8,
        kill_every=2.0,
        budget=60,
    )


@pytest.mark.chaos
@pytest.mark.timeout(1500)
def test_three_hosts_share_a_ledger_through_kills_and_restarts_200(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    postgres_url: str,
    site_a: Connection,
    site_b: Connection,
    three_hosts: Hosts,
) -> None:
    _run(
        testbed=testbed,
        tmp_path=tmp_path,
        postgres_url=postgres_url,
        site_a=site_a,
        site_b=site_b,
        made=three_hosts,
        count=200,
        interval=1.0,
        kill_every=4.0,
        budget=600,
    )
