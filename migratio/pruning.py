"""``migratio db prune``: let a ledger kept for years go of old ended migrations,
after writing each one's whole record (``show --json``) to an archive.

The archive is appended to and synced before a batch is deleted, so a prune cut
short never loses a migration: at worst the next run archives it a second time.
Batches keep each delete's transaction short beside a running daemon.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from migratio import reports
from migratio.errors import UsageError
from migratio.ledger.retention import Retention
from migratio.ledger.store import Ledger, utcnow

BATCH = 200


@dataclass(frozen=True)
class Pruned:
    before: datetime
    migrations: int
    audit_rows: int
    owing_cleanup: int
    newest_of_route: int
    with_group: int
    dry_run: bool


def prune(
    ledger: Ledger, older_than: timedelta, archive: Path | None, *, dry_run: bool = False
) -> Pruned:
    before = utcnow() - older_than
    retention = Retention(ledger)
    plan = retention.prunable(before)
    kept = (plan.owing_cleanup, plan.newest_of_route, plan.with_group)
    if dry_run:
        return Pruned(before, len(plan.migration_ids), 0, *kept, dry_run=True)
    if archive is not None:
        _append(archive, [], "")  # a path it cannot write is refused before anything goes
    migrations = audit_rows = 0
    for start in range(0, len(plan.migration_ids), BATCH):
        batch = plan.migration_ids[start : start + BATCH]
        if archive is not None:
            records = [reports.whole(found) for found in retention.whole(batch)]
            _append(archive, records, f"; {migrations} pruned before, the rest kept")
        deleted, audit = retention.prune(batch, before)
        migrations += deleted
        audit_rows += audit
    return Pruned(before, migrations, audit_rows, *kept, dry_run=False)


def summary(pruned: Pruned, archive: Path | None) -> str:
    """One line for the operator."""
    verb = "would prune" if pruned.dry_run else "pruned"
    line = f"{verb} {pruned.migrations} migrations ended before {pruned.before:%Y-%m-%d %H:%M} UTC"
    if not pruned.dry_run:
        line += f" ({pruned.audit_rows} audit rows)"
    if archive is not None and pruned.migrations:
        line += f", {'to be ' if pruned.dry_run else ''}archived to {archive}"
    return (
        f"{line}; kept {pruned.owing_cleanup} that still owe cleanup, "
        f"{pruned.newest_of_route} newest done of their image and route, "
        f"{pruned.with_group} with their group"
    )


def _append(archive: Path, records: list[dict[str, Any]], so_far: str) -> None:
    try:
        with archive.open("a", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise UsageError(f"cannot write the archive {archive}: {exc.strerror}{so_far}") from exc
