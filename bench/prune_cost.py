"""Benchmark: what ``migratio db prune`` costs on a ledger kept for years.

The ledger gets ``--migrations`` migrations that ended over a year ago (nine in
ten done, one failed; 1,000 images, so most done ones are superseded; 8 audit
rows each), written in bulk, then analysed as autovacuum leaves a PostgreSQL
ledger. Measured: the plan (which may go) and the prune with its archive, as
``db prune --older-than 365 --archive FILE`` runs them. No goal: the figures say
what an operator should expect.

    python3 bench/prune_cost.py [--migrations 100000] [--ledger URL]

The default ledger is a SQLite file in a temporary directory; a PostgreSQL URL
names an empty database, whose tables it drops first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, insert, text  # noqa: E402

from bench.rounds import emit  # noqa: E402
from migratio import pruning  # noqa: E402
from migratio.ledger.database import upgrade  # noqa: E402
from migratio.ledger.models import MigrationRow, TransitionRow  # noqa: E402
from migratio.ledger.retention import Retention  # noqa: E402
from migratio.ledger.store import Ledger, utcnow  # noqa: E402
from tests.support.ledgers import empty_ledger_engine  # noqa: E402

IMAGES = 1000
AUDIT_ROWS = 8
RETENTION = timedelta(days=365)


def fill(engine: Engine, count: int) -> None:
    """``count`` migrations ended 400 days ago and later, one second apart."""
    start = utcnow() - timedelta(days=400)
    with engine.begin() as connection:
        for first in range(0, count, 5000):
            migrations, audit = [], []
            for n in range(first, min(count, first + 5000)):
                migration_id, at = str(uuid.uuid4()), start + timedelta(seconds=n)
                migrations.append(
                    {
                        "id": migration_id,
                        "source_site": "site-a",
                        "dest_site": "site-b",
                        "image_id": f"image-{n % IMAGES}",
                        "state": "done" if n % 10 else "failed",
                        "attempt": 0,
                        "next_attempt_at": at,
                        "cancel_requested": False,
                        "bytes_done": 0,
                        "created_at": at,
                        "updated_at": at,
                        "finished_at": at,
                    }
                )
                row = {"migration_id": migration_id, "to_state": "queued", "at": at}
                audit += [{**row, "host": "bench", "pid": 1, "message": "step"}] * AUDIT_ROWS
            connection.execute(insert(MigrationRow), migrations)
            connection.execute(insert(TransitionRow), audit)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--migrations", type=int, default=100_000)
    parser.add_argument("--ledger", help="a ledger URL (default: SQLite in a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        engine = empty_ledger_engine(args.ledger or f"sqlite:///{scratch}/ledger.sqlite")
        upgrade(engine)
        fill(engine, args.migrations)
        ledger = Ledger(engine)
        started = time.monotonic()
        Retention(ledger).prunable(utcnow() - RETENTION)  # what `--dry-run` costs
        plan_seconds = time.monotonic() - started
        archive = Path(scratch) / "pruned.jsonl"
        started = time.monotonic()
        pruned = pruning.prune(ledger, RETENTION, archive)
        prune_seconds = time.monotonic() - started
        emit(
            "prune_cost",
            ledger=engine.dialect.name,
            migrations=args.migrations,
            pruned=pruned.migrations,
            kept=pruned.owing_cleanup + pruned.newest_of_route + pruned.with_group,
            audit_rows=pruned.audit_rows,
            plan_seconds=plan_seconds,
            prune_seconds=prune_seconds,
            archive_mib=archive.stat().st_size / 2**20,
        )
        print(f"{engine.dialect.name}: {pruning.summary(pruned, archive)}", file=sys.stderr)
        print(
            f"plan {plan_seconds:.2f} s, prune and archive {prune_seconds:.1f} s",
            file=sys.stderr,
        )
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
