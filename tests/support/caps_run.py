"""Caps on the real bed, for tests/e2e/test_caps.py and bench/caps.py: site files
with caps, source images, and what the ledger's audit rows say about a run (the
aggregate upload rate, the most migrations running at once to a site).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from openstack.connection import Connection
from sqlalchemy import select

from migratio.ledger.models import TransitionRow
from migratio.ledger.store import Ledger
from migratio.machine import TERMINAL
from tests.support import glance_peer, migratio_cli

MIB = 1 << 20
ENDED = {state.value for state in TERMINAL}


def capped_sites(bed_sites: Path, into: Path, site: str, **caps: object) -> Path:
    """The bed's site files for site-a and site-b, with ``caps`` added to ``site``'s."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("site-a", "site-b"):
        shutil.copy(bed_sites / f"{name}.yml", into / f"{name}.yml")
    file = into / f"{site}.yml"
    settings = yaml.safe_load(file.read_text(encoding="utf-8"))
    file.write_text(yaml.safe_dump({**settings, **caps}), encoding="utf-8")
    return into


def raw_sources(site_a: Connection, directory: Path, sizes_mib: list[int]) -> dict[str, str]:
    """Distinct raw disks on site-a (a zeroed first sector, then random bytes),
    uploaded at once: image id -> sha512."""

    def one(n: int, size: int) -> tuple[str, str]:
        data = bytes(4096) + os.urandom(size * MIB - 4096)
        path = directory / f"caps{n}.raw"
        path.write_bytes(data)
        image_id = glance_peer.upload(site_a, path, name=f"caps-{n}", disk_format="raw")
        path.unlink()
        return image_id, hashlib.sha512(data).hexdigest()

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, range(len(sizes_mib)), sizes_mib))


@dataclass(frozen=True)
class Rate:
    """Bytes a group of migrations uploaded over the transfer, from their progress
    in the ledger (recorded every ``progress_seconds``) sampled by the test: from
    the first sample with bytes sent to the first with all of them sent."""

    bytes: int
    seconds: float
    overlap_seconds: float  # how long all of them were in ``uploading`` at once

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / self.seconds


def watch_uploads(
    ledger: Ledger, ids: list[str], timeout: float, every: float = 0.05
) -> list[tuple[float, int]]:
    """(monotonic time, bytes uploaded by all) until every migration has ended."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        migrations = [ledger.get(i) for i in ids]
        sent = sum(_uploaded(m.state, m.bytes_done, m.bytes_total) for m in migrations)
        samples.append((time.monotonic(), sent))
        if all(m.state in ENDED for m in migrations):
            return samples
        time.sleep(every)
    raise TimeoutError(f"migrations {ids} still running after {timeout} s")


def _uploaded(state: str, done: int, total: int | None) -> int:
    if state == "uploading":
        return done
    return (total or 0) if state in {"registering", "done"} else 0


def upload_rate(ledger: Ledger, ids: list[str], samples: list[tuple[float, int]]) -> Rate:
    total = sum(ledger.get(i).bytes_total or 0 for i in ids)
    start_at, start_bytes = next((t, b) for t, b in samples if b > 0)
    end_at = next(t for t, b in samples if b >= total)
    spans = []
    for migration_id in ids:
        history = ledger.history(migration_id)
        start = next(r.at for r in history if r.to_state == "uploading" != r.from_state)
        end = next(r.at for r in history if r.from_state == "uploading" != r.to_state)
        spans.append((start, end))
    overlap = (min(e for _, e in spans) - max(s for s, _ in spans)).total_seconds()
    return Rate(total - start_bytes, end_at - start_at, max(0.0, overlap))


@dataclass(frozen=True)
class Concurrency:
    most_running: int  # at once, by the audit rows in commit order
    waiting_notes: int  # "waiting for a free slot" notes
    runners: int  # distinct daemons (host, pid) that took a migration out of queued


def concurrency(ledger: Ledger, ids: list[str]) -> Concurrency:
    """A migration runs from the row that takes it out of ``queued`` to the row
    that ends it; rows are swept in commit order (their ids)."""
    query = (
        select(TransitionRow.from_state, TransitionRow.to_state, TransitionRow.message)
        .add_columns(TransitionRow.host, TransitionRow.pid)
        .where(TransitionRow.migration_id.in_(ids))
        .order_by(TransitionRow.id)
    )
    with ledger.engine.connect() as connection:
        rows = connection.execute(query).all()
    running = most = notes = 0
    runners = set()
    for from_state, to_state, message, host, pid in rows:
        if from_state == "queued" and to_state != "queued":
            running += 1
            runners.add((host, pid))
        elif to_state in ENDED and from_state is not None:
            running -= 1
        elif from_state == to_state == "queued" and message.startswith("waiting for a free slot"):
            notes += 1
        most = max(most, running)
    return Concurrency(most, notes, len(runners))


def run_daemons(
    configs: list[Path], ledger: Ledger, ids: list[str], timeout: float = 300
) -> list[tuple[float, int]]:
    """Start a ``migratio run`` per config, watch the uploads (``watch_uploads``)
    until every migration has ended, stop the daemons (each must exit 0)."""
    daemons = [migratio_cli.start(config, config.parent / "migratio.log") for config in configs]
    try:
        samples = watch_uploads(ledger, ids, timeout)
    finally:
        exits = [stop(daemon) for daemon in daemons]
    assert exits == [0] * len(daemons), exits
    return samples


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM a daemon and return its exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(30)
