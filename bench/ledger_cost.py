"""Benchmark: what the ledger costs an operator and a migration, on SQLite and PostgreSQL.

- ``migratio status`` (the real command, default view: the newest 50) and
  ``migratio --help`` wall time, median/min/max over the rounds, on a ledger of
  N migrations; the baseline in the same run is ``python3 -c pass`` (the
  interpreter's own start-up, which no command can beat). The rounds take
  turns (pass, help, status on each ledger, in both modes below), so a busy
  moment hits all alike; each line also gives the median user+sys CPU time,
  which a shared machine disturbs less than wall time. PostgreSQL's ledger is
  vacuumed and analysed after it is filled, as autovacuum would soon do.
- Both with and without bytecode (``--bytecode``), each line saying which:
  ``compiled`` is what an operator runs (``pip install`` compiles migratio's
  modules; one untimed warm-up run writes them here); ``none`` is
  ``PYTHONDONTWRITEBYTECODE=1``, as on the development machines, where every run
  compiles migratio's own modules again (the libraries keep theirs). Each mode
  runs a fresh copy of migratio's source, so no earlier run's bytecode leaks in.
- The cost of one transition (its commit, its audit row and its feedback
  outbox row in one transaction), median over the transitions of M migrations.

    python3 bench/ledger_cost.py [--migrations 100000] [--rounds 5]
                                 [--bytecode both|compiled|none] [--tiny]

Goals (issue "Performance"): --help <= 0.25 s; status <= 0.30 s on SQLite and
<= 0.40 s on PostgreSQL at 100,000 migrations; a transition <= 10 ms (SQLite),
<= 15 ms (PostgreSQL). PostgreSQL: $MIGRATIO_TEST_POSTGRES_URL, else a private
cluster (testbed_lib).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench.rounds import emit  # noqa: E402
from migratio.feedback.outbox import status_job  # noqa: E402
from migratio.ledger.database import upgrade  # noqa: E402
from migratio.ledger.models import MigrationRow  # noqa: E402
from migratio.ledger.store import Ledger, utcnow  # noqa: E402
from migratio.machine import Trigger  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.ledgers import empty_ledger_engine  # noqa: E402

STEPS = [Trigger.START, Trigger.EXPORTED, Trigger.CONVERTED, Trigger.UPLOADED, Trigger.REGISTERED]


def fill(url: str, count: int) -> None:
    """``count`` migrations in every state, written in bulk (not what is measured)."""
    engine = empty_ledger_engine(url)
    upgrade(engine)
    start = utcnow() - timedelta(days=30)
    states = ["done"] * 8 + ["failed", "queued"]
    with engine.begin() as connection:
        for first in range(0, count, 5000):
            rows = [
                {
                    "id": str(uuid.uuid4()),
                    "source_site": "site-a",
                    "dest_site": "site-b",
                    "image_id": str(uuid.uuid4()),
                    "state": states[n % len(states)],
                    "attempt": 0,
                    "next_attempt_at": start,
                    "cancel_requested": False,
                    "bytes_done": 0,
                    "created_at": start + timedelta(seconds=n),
                    "updated_at": start + timedelta(seconds=n),
                }
                for n in range(first, min(count, first + 5000))
            ]
            connection.execute(insert(MigrationRow), rows)
    if engine.dialect.name == "postgresql":
        # What autovacuum does to a ledger soon after: without it the first
        # rounds would share the server with it.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE migrations"))
    engine.dispose()


BYTECODE = {"compiled": True, "none": False}


@dataclass
class Timed:
    """One command's rounds, run from ``source`` with ``env``: wall seconds and
    the child's user+sys CPU seconds."""

    what: str
    figure: str
    command: list[str]
    params: dict[str, object]
    source: Path
    env: dict[str, str]
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def run(self, timed: bool = True) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # From the source copy: ``python -m`` looks in the working directory first.
        subprocess.run(self.command, check=True, capture_output=True, env=self.env, cwd=self.source)
        if timed:
            self.walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def source_copy(directory: Path, mode: str) -> Path:
    """migratio's own packages copied without bytecode, for one mode's runs."""
    target = directory / f"source-{mode}"
    for package in ("migratio", "migrations_db"):
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def mode_env(source: Path, compiled: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not compiled:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def start_up(commands: list[Timed], rounds: int) -> None:
    """One untimed run of each command (with bytecode, it writes what the timed
    runs read; it warms the page cache and the database's buffers alike for
    both modes), then every command once per round, in turns."""
    for command in commands:
        command.run(timed=False)
    for _ in range(rounds):
        for command in commands:
            command.run()


def transition_costs(url: str, migrations: int) -> list[float]:
    engine = empty_ledger_engine(url)
    upgrade(engine)
    ledger = Ledger(engine, on_change=status_job)
    costs = []
    for n in range(migrations):
        migration = ledger.create("site-a", "site-b", f"img-{n}")
        ledger.acquire(migration.id, "bench", 60)
        for trigger in STEPS:
            started = time.perf_counter()
            ledger.transition(migration.id, "bench", trigger, "bench")
            costs.append(time.perf_counter() - started)
    engine.dispose()
    return costs


def report(
    what: str,
    figure: str,
    values: list[float],
    params: dict[str, object],
    *,
    unit: float = 1.0,
    suffix: str = "s",
    cpus: list[float] | None = None,
) -> None:
    """A human line and a JSON line (``figure``, ``params``, median/min/max in
    ``suffix``; ``cpu_median``: the child's user+sys seconds)."""
    scaled = [v * unit for v in values]
    median = statistics.median(scaled)
    cpu = {} if not cpus else {"cpu_median": statistics.median(cpus)}
    print(
        f"{what:<62} median {median:7.3f} {suffix}  "
        f"min {min(scaled):7.3f}  max {max(scaled):7.3f}  (n={len(values)})"
        + (f"  cpu {cpu['cpu_median']:.3f} s" if cpu else "")
    )
    emit(
        "ledger_cost",
        figure=figure,
        **params,
        unit=suffix,
        median=median,
        min=min(scaled),
        max=max(scaled),
        n=len(values),
        **cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--migrations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transitions-of", type=int, default=60, metavar="M")
    parser.add_argument(
        "--bytecode",
        choices=["both", *BYTECODE],
        default="both",
        help="compiled: as installed (after a warm-up run); none: PYTHONDONTWRITEBYTECODE=1",
    )
    parser.add_argument("--tiny", action="store_true", help="a few seconds (CI)")
    args = parser.parse_args()
    if args.tiny:
        args.migrations, args.rounds, args.transitions_of = 1000, 1, 3

    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as tmp:
        directory = Path(tmp)
        postgres = os.environ.get("MIGRATIO_TEST_POSTGRES_URL")
        started_postgres = postgres is None
        if postgres is None:
            postgres = testbed_lib.start_postgres(directory / "postgres")
        try:
            run(directory, postgres, args)
        finally:
            if started_postgres:
                testbed_lib.stop_postgres(directory / "postgres")


def run(directory: Path, postgres: str, args: argparse.Namespace) -> None:
    python = sys.executable
    sites = directory / "sites"
    sites.mkdir()
    for site in ("site-a", "site-b"):
        (sites / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    ledgers: dict[str, str] = {
        "sqlite": f"sqlite:///{directory / 'ledger.sqlite'}",
        "postgresql": postgres,
    }
    configs = {}
    for name, url in ledgers.items():
        fill(url, args.migrations)
        (directory / name).mkdir()
        configs[name] = write_daemon_config(directory / name, sites, database_url=url)
    modes = list(BYTECODE) if args.bytecode == "both" else [args.bytecode]
    commands = []
    for mode in modes:
        compiled = BYTECODE[mode]
        source = source_copy(directory, mode)
        env = mode_env(source, compiled)
        label = "bytecode compiled" if compiled else "no bytecode"
        params: dict[str, object] = {"bytecode": compiled}
        commands += [
            Timed(f"baseline: python3 -c pass [{label}]", "python_start",
                  [python, "-c", "pass"], params, source, env),
            Timed(f"migratio --help [{label}]", "help",
                  [python, "-m", "migratio", "--help"], params, source, env),
        ]  # fmt: skip
        for name, config in configs.items():
            status = [python, "-m", "migratio", "--config", str(config), "status"]
            ledger = {"ledger": name, "migrations": args.migrations}
            what = f"migratio status, {args.migrations:,} migrations ({name}) [{label}]"
            commands.append(Timed(what, "status", status, {**params, **ledger}, source, env))
    start_up(commands, args.rounds)
    for command in commands:
        report(command.what, command.figure, command.walls, command.params, cpus=command.cpus)
    for name, url in ledgers.items():
        costs = transition_costs(url, args.transitions_of)
        what = f"one transition + audit + outbox ({name})"
        report(what, "transition", costs, {"ledger": name}, unit=1000, suffix="ms")


if __name__ == "__main__":
    main()
