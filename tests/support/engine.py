"""The engine on stub sites: a SQLite ledger, in-memory settings and two stub sites,
driven in-process by a real ``Supervisor`` (tests/unit/test_engine_*.py).

``crash`` stands for a SIGKILL: it escapes every handler of the supervisor, so the
lease stays with the dead daemon and nothing more is written, as after a real kill.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from migratio import config
from migratio.drivers.stub import StubSite, StubSites
from migratio.ledger.models import ArtifactRow, MigrationRow
from migratio.ledger.store import Ledger, Migration, utcnow
from migratio.supervisor import Supervisor
from tests.support.ledgers import fresh_sqlite_ledger, sqlite_engine

SOURCE = "site-a"
DESTINATION = "site-b"
DESTINATION_ONLY = "site-aws"  # configured as AWS: a destination only
KIB = 1024
MIB = 1024 * KIB
RUN_LIMIT = 10.0  # seconds a supervisor may take before the test fails instead of hanging

# Progress recorded (and a cancel looked for) at every chunk of a stub transfer.
EVERY_CHUNK = 0.0

# Tiny but real: every loop and backoff is milliseconds, a lease is as short as
# the config allows (renewals and expiries are driven by the tests, not waited for).
FAST: dict[str, Any] = {
    "lease_seconds": 2,
    "poll_seconds": 0.05,
    "progress_seconds": 0.02,  # tests that stop a transfer midway take EVERY_CHUNK
    "retry": config.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05),
}


class Crash(BaseException):
    """A simulated SIGKILL of the daemon (see the module docstring); a BaseException,
    so that no `except Exception` of the engine can handle it."""


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes no format inspector mistakes for a header: a raw disk
    (pseudo-random, the same for the same seed)."""
    return random.Random(seed).randbytes(size)


def qcow2_of(raw: bytes, directory: Path, *, compressed: bool = False) -> bytes:
    """The bytes of a real qcow2 holding ``raw`` (made by qemu-img; ``compressed``:
    its clusters compressed where that makes them smaller)."""
    directory.mkdir(parents=True, exist_ok=True)
    raw_file, qcow2_file = directory / "disk.raw", directory / "disk.qcow2"
    raw_file.write_bytes(raw)
    subprocess.run(
        [
            "qemu-img",
            "convert",
            *(["-c"] if compressed else []),
            *("-f", "raw", "-O", "qcow2", str(raw_file), str(qcow2_file)),
        ],
        check=True,
    )
    return qcow2_file.read_bytes()


@dataclass
class EngineBed:
    """One test's ledger, settings and stub sites (``source`` is site-a,
    ``destination`` site-b; site-aws is configured as AWS and served by ``destination``)."""

    settings: config.Settings
    ledger: Ledger
    source: StubSite
    destination: StubSite
    sites: StubSites

    @property
    def work_dir(self) -> Path:
        return self.settings.daemon.work_dir

    def configure(self, **daemon: Any) -> None:
        """Change daemon settings (for supervisors made from now on)."""
        self.settings.daemon = self.settings.daemon.model_copy(update=daemon)

    def add_destination(self, site_id: str, **behaviour: Any) -> StubSite:
        """Another stub destination, configured as an OpenStack site."""
        stub = StubSite(site_id, **behaviour)
        self.sites.sites[site_id] = stub
        self.settings.sites[site_id] = config.Site(
            id=site_id, settings=config.OpenStackSite(type="openstack", cloud="stub")
        )
        return stub

    def supervisor(self, owner: str = "daemon-1") -> Supervisor:
        return Supervisor(self.settings, self.ledger, owner=owner, site_opener=self.sites)

    def submit(self, image_id: str, source: str = SOURCE, to: str = DESTINATION) -> Migration:
        return self.ledger.create(source, to, image_id)

    def run(
        self, supervisor: Supervisor | None = None, *, until: Callable[[], bool] | None = None
    ) -> Supervisor:
        """Run a supervisor until nothing is left to do (or, with ``until``, until
        that holds; then stop it); fail the test if that takes RUN_LIMIT seconds."""
        supervisor = supervisor or self.supervisor()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                supervisor.run(until_idle=until is None)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="supervisor", daemon=True)
        thread.start()
        deadline = time.monotonic() + RUN_LIMIT
        if until is not None:
            while not until() and time.monotonic() < deadline:
                time.sleep(0.005)
            supervisor.stop()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            supervisor.stop()
            thread.join(5)
            raise AssertionError(f"supervisor still running after {RUN_LIMIT} s")
        if errors:
            raise errors[0]
        return supervisor

    def crash(self, supervisor: Supervisor) -> Callable[[], None]:
        """A callback that kills ``supervisor`` where it is called."""

        def kill() -> None:
            supervisor.stop()
            raise Crash(f"{supervisor.owner} killed")

        return kill

    def crash_at_transition(self, supervisor: Supervisor, trigger: str, *, before: bool) -> None:
        """Kill ``supervisor`` at the transition ``trigger``: just before it commits
        (the state's work done, not recorded) or just after (nothing of the next
        state done). ``supervisor`` comes from ``supervisor_to_kill``."""
        at_transition(supervisor.ledger, trigger, self.crash(supervisor), before=before)

    def supervisor_to_kill(self, owner: str = "daemon-dead") -> Supervisor:
        """A supervisor for ``crash`` and ``crash_at_transition``: with a ``Ledger``
        object of its own (same database), as another process has, and a janitor
        that never wakes (a kill stops the janitor too; a live one would clean up
        what the test wants left)."""
        daemon = self.settings.daemon.model_copy(update={"poll_seconds": 3600})
        settings = config.Settings(self.settings.path, daemon, self.settings.sites)
        return Supervisor(settings, Ledger(self.ledger.engine), owner=owner, site_opener=self.sites)

    def expire_lease(self, migration_id: str) -> None:
        """Time passes for a dead daemon's lease (instead of waiting lease_seconds)."""
        self._update(migration_id, lease_expires_at=utcnow() - timedelta(seconds=1))

    def steal_lease(self, migration_id: str, owner: str = "daemon-2") -> None:
        """Another daemon holds the migration now (our lease expired meanwhile)."""
        self._update(
            migration_id, lease_owner=owner, lease_expires_at=utcnow() + timedelta(hours=1)
        )

    def make_due(self, migration_id: str) -> None:
        """Its retry is due now and its artifacts' removal too (time passes)."""
        self._update(migration_id, next_attempt_at=utcnow())
        with self.ledger.engine.begin() as connection:
            connection.execute(
                update(ArtifactRow)
                .where(ArtifactRow.migration_id == migration_id)
                .values(next_attempt_at=None)
            )

    def _update(self, migration_id: str, **values: Any) -> None:
        with self.ledger.engine.begin() as connection:
            connection.execute(
                update(MigrationRow).where(MigrationRow.id == migration_id).values(**values)
            )

    # -- what happened ------------------------------------------------------------

    def states(self, migration_id: str) -> list[tuple[str | None, str]]:
        """The audit trail as (from, to) pairs, notes (from = to) included."""
        return [(row.from_state, row.to_state) for row in self.ledger.history(migration_id)]

    def messages(self, migration_id: str) -> list[str]:
        return [row.message for row in self.ledger.history(migration_id)]

    def notes(self, migration_id: str) -> list[tuple[str, str]]:
        """(state, message) of the audit rows that changed no state (retries, take-overs)."""
        return [
            (row.to_state, row.message)
            for row in self.ledger.history(migration_id)
            if row.from_state == row.to_state
        ]

    def artifacts(self, migration_id: str) -> list[tuple[str, str, str]]:
        """(kind, file name or record id, status) of every artifact, oldest first."""
        return [
            (a.kind, Path(a.ref).name if a.kind == "file" else a.ref, a.status)
            for a in self.ledger.artifacts(migration_id, status=None)
        ]

    def leftovers(self, migration_id: str) -> list[str]:
        """Files left in the migration's work dir."""
        directory = self.work_dir / migration_id
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []

    def records_of(self, migration_id: str) -> list[str]:
        """Ids of the destination records tagged with the migration id."""
        return [r.id for r in self.destination.records.values() if r.migration_id == migration_id]


HAPPY_PATH = [
    (None, "queued"),
    ("queued", "exporting"),
    ("exporting", "converting"),
    ("converting", "uploading"),
    ("uploading", "registering"),
    ("registering", "done"),
]


# Where a daemon can die: at a transition, just before it commits (the state's
# work done, not recorded) or just after (nothing of the next state done); and the
# state that leaves the migration in.
CRASH_POINTS = [
    ("start", False, "exporting"),
    ("exported", True, "exporting"),
    ("exported", False, "converting"),
    ("converted", True, "converting"),
    ("converted", False, "uploading"),
    ("uploaded", True, "uploading"),
    ("uploaded", False, "registering"),
    ("registered", True, "registering"),
]
CRASH_POINT_IDS = [f"{'before' if b else 'after'}-{trigger}" for trigger, b, _ in CRASH_POINTS]


def at_transition(
    ledger: Ledger, trigger: str, action: Callable[[], None], *, before: bool
) -> None:
    """Run ``action`` in the thread firing ``trigger``, just before its commit or
    just after it (an action that raises stops the thread there)."""
    commit = ledger.transition
    watched = trigger

    def transition(
        migration_id: str, owner: str | None, trigger: str, message: str, **fields: Any
    ) -> Migration:
        if trigger != watched:
            return commit(migration_id, owner, trigger, message, **fields)
        if before:
            action()
        migration = commit(migration_id, owner, trigger, message, **fields)
        if not before:
            action()
        return migration

    ledger.transition = transition  # type: ignore[method-assign]


def happy_path_with_notes(state: str, count: int) -> list[tuple[str | None, str]]:
    """HAPPY_PATH with ``count`` notes (retries, take-overs) in ``state``."""
    path: list[tuple[str | None, str]] = []
    for step in HAPPY_PATH:
        path.append(step)
        if step[1] == state:
            path += [(state, state)] * count
    return path


@contextmanager
def open_engine_bed(directory: Path, session_dir: Path) -> Iterator[EngineBed]:
    """An ``EngineBed`` in ``directory``; ``session_dir`` keeps the ledger template."""
    engine = sqlite_engine(fresh_sqlite_ledger(directory, session_dir))
    openstack = config.OpenStackSite(type="openstack", cloud="stub")
    sites = {
        SOURCE: config.Site(id=SOURCE, settings=openstack),
        DESTINATION: config.Site(id=DESTINATION, settings=openstack),
        DESTINATION_ONLY: config.Site(
            id=DESTINATION_ONLY, settings=config.AwsSite(type="aws", region="eu-west-1")
        ),
    }
    daemon = config.DaemonConfig(
        name=SOURCE, work_dir=directory / "work", intake=False, feedback=False, **FAST
    )
    source, destination = StubSite(SOURCE), StubSite(DESTINATION)
    stubs = StubSites(source, destination)
    # Served by a stub that could be read from: only the configured type refuses it.
    stubs.sites[DESTINATION_ONLY] = destination
    yield EngineBed(
        config.Settings(directory / "migratio.yml", daemon, sites),
        Ledger(engine),
        source,
        destination,
        stubs,
    )
    engine.dispose()
