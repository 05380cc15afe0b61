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
not a queue (on a busy machine, where migrations take longer, the next one waits
until fewer than one daemon's workers are unfinished); and one daemon is down at
a time (the next kill waits for the last replacement to be up: a daemon takes
seconds to start on a busy machine, and with all three down nobody can take over).
A take-over is timed from the dead owner's last renewal (its lease expiry, read
right after the kill, less ``lease_seconds``) to the take-over note in the audit
trail.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import testbed_lib
from openstack.connection import Connection
from sqlalchemy.engine import make_url

from migratio.config import load_settings
from migratio.ledger.database import upgrade
from migratio.ledger.store import Ledger
from tests.support import glance_peer, reliability
from tests.support.chaos_daemons import (
    Daemon,
    Submitter,
    chaos,
    find_takeovers,
    handed_over_silently,
    state_changes,
    wait_all_ended,
)
from tests.support.daemon_config import write_daemon_config
from tests.support.engine import HAPPY_PATH
from tests.support.hosts import Hosts, hosts
from tests.support.ledgers import empty_ledger_engine

pytestmark = [pytest.mark.testbed, pytest.mark.postgres, pytest.mark.reliability]

LEASE_SECONDS = 4.0
HEARTBEAT_SECONDS = LEASE_SECONDS / 3  # the supervisor renews every lease_seconds / 3
# On top of lease + heartbeat: the claim loop's poll and a busy CI machine.
TAKEOVER_SLACK_SECONDS = 2.0
IMAGE_KIB = 320
# Each daemon's workers; the Submitter keeps at most this many migrations
# unfinished, so a take-over always finds a free worker.
CONCURRENCY = 4


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
    urls = [*testbed.keystone_urls.values(), *testbed.glance_urls.values()]
    ports = [urlsplit(url).port for url in urls]
    ports.append(make_url(postgres_url).port or 5432)
    assert all(ports), ports
    return [int(port) for port in ports if port]


@pytest.fixture
def three_hosts(testbed: testbed_lib.Bed, postgres_url: str, tmp_path: Path) -> Iterator[Hosts]:
    with hosts(3, _peer_ports(testbed, postgres_url), tmp_path) as made:
        yield made


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
            concurrency=CONCURRENCY,
            lease_seconds=LEASE_SECONDS,
            poll_seconds=0.2,
            intake=False,
            feedback=False,
            retry={"max_attempts": 20, "base_delay": 0.2, "max_delay": 1.0},
        )
        daemons.append(Daemon(host, config))
    ledger = Ledger.open(postgres_url, migrate=False)
    settings = load_settings(daemons[0].config)
    submitter = Submitter(settings, ledger, list(sources), interval, CONCURRENCY)
    try:
        for daemon in daemons:
            daemon.start()
        submitter.start()
        deadline = time.monotonic() + budget
        kills = chaos(daemons, ledger, kill_every, deadline, submitter.is_alive)
        submitter.join(60)
        wait_all_ended(ledger, deadline + 60)
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
        silent += handed_over_silently(history)
        images = copies.get(migration_id, [])
        if state_changes(history) != HAPPY_PATH or len(images) != 1:
            twice.append(migration_id)
            continue
        [image] = images
        assert image["id"] == migration.dest_image_id and image["status"] == "active"
        assert image["os_hash_value"] == sha512, migration_id
    takeovers, missing = find_takeovers(kills, ledger, LEASE_SECONDS)
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
        submit_held_back_s=round(submitter.held_back, 1),
    )
    for late in (t for t in takeovers if t.since_renewal > bound):
        print(f"late take-over: {late}")
    print(
        f"R5: {count} migrations, {len(kills)} kills, {len(times)} take-overs, max take-over "
        f"{max_takeover} s (lease {LEASE_SECONDS} s + heartbeat {HEARTBEAT_SECONDS:.2f} s), "
        f"namespaces {made.namespaces} {made.why_not}, wall {wall:.1f} s "
        f"(submissions held back {submitter.held_back:.1f} s)"
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


@pytest.mark.parametrize(
    ("count", "interval", "kill_every", "budget"),
    [
        pytest.param(20, 0.8, 2.0, 60, id="quick"),
        pytest.param(
            200, 1.0, 4.0, 600, id="200", marks=[pytest.mark.chaos, pytest.mark.timeout(1500)]
        ),
    ],
)
def test_three_hosts_share_a_ledger_through_kills_and_restarts(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    postgres_url: str,
    site_a: Connection,
    site_b: Connection,
    three_hosts: Hosts,
    count: int,
    interval: float,
    kill_every: float,
    budget: float,
) -> None:
    _run(
        testbed=testbed,
        tmp_path=tmp_path,
        postgres_url=postgres_url,
        site_a=site_a,
        site_b=site_b,
        made=three_hosts,
        count=count,
        interval=interval,
        kill_every=kill_every,
        budget=budget,
    )
