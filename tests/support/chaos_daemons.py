"""Daemons on hosts, killed and restarted at random, and what the audit trail
says about it afterwards: the machinery of the multi-host test (R5).

A ``Daemon`` is one ``migratio run`` on a ``Host`` (tests/support/hosts.py);
``chaos`` SIGKILLs one at a time and notes the leases it held (``Kill``);
``find_takeovers`` finds each of those leases' take-over note and times it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from migratio import operations
from migratio.config import Settings
from migratio.ledger.models import MigrationRow
from migratio.ledger.store import Ledger, Transition, utcnow
from tests.support.hosts import Host

ROOT = Path(__file__).resolve().parents[2]
STARTED = "starting (concurrency"  # the supervisor's first line, after the signal handlers


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


def held_by(ledger: Ledger, host: str, pid: int) -> dict[str, datetime]:
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(MigrationRow.id, MigrationRow.lease_expires_at).where(
                MigrationRow.lease_owner.like(f"{host}:{pid}:%")
            )
        ).all()
    return {row.id: row.lease_expires_at for row in rows}


def chaos(
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
        kill.held = held_by(ledger, kill.host, pid)
        kills.append(kill)
        victim.start()
    return kills


class Submitter(threading.Thread):
    """Submits one migration per source every ``interval`` s, as templates arrive
    over a day (not all at once: a take-over then finds a free worker, and what is
    timed is the lease, not the queue).

    And never more than ``most_active`` unfinished at once: on a busy machine each
    migration takes longer, so at a fixed interval they would pile up until every
    worker is taken and a take-over waits for one. At most one daemon's
    ``concurrency`` unfinished, whichever daemon dies, either one left has a free
    worker for each lease it must take over."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        sources: list[str],
        interval: float,
        most_active: int,
    ):
        super().__init__(name="submitter", daemon=True)
        self.settings, self.ledger, self.sources, self.interval = (
            settings,
            ledger,
            sources,
            interval,
        )
        self.most_active = most_active
        self.ids: list[str] = []
        self.held_back = 0.0  # seconds spent waiting for a migration to end

    def run(self) -> None:
        for source in self.sources:
            waited = time.monotonic()
            while self.ledger.count_active() >= self.most_active:
                time.sleep(0.05)
            self.held_back += time.monotonic() - waited
            migration = operations.submit(self.settings, self.ledger, source, "site-a", "site-b")
            self.ids.append(migration.id)
            time.sleep(self.interval)


def wait_all_ended(ledger: Ledger, deadline: float) -> None:
    while time.monotonic() < deadline and ledger.count_active():
        time.sleep(0.2)


def state_changes(history: list[Transition]) -> list[tuple[str | None, str]]:
    return [(row.from_state, row.to_state) for row in history if row.from_state != row.to_state]


def handed_over_silently(history: list[Transition]) -> int:
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


def find_takeovers(
    kills: list[Kill], ledger: Ledger, lease_seconds: float
) -> tuple[list[Takeover], list[str]]:
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
                    after_expiry + lease_seconds,
                    after_expiry,
                    migration_id,
                    f"{kill.host}:{kill.pid} killed {kill.at.time()} expiry {expires.time()}",
                    taker,
                )
            )
    return found, missing
