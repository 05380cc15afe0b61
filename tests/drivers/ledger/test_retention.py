"""``migratio db prune`` on SQLite and a real PostgreSQL: which old ended
migrations go (with every row that hangs off them), which stay and why, and the
archive that holds what went."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Table, func, select

from migratio import operations, pruning, reports
from migratio.errors import UnknownMigration
from migratio.ledger.models import ARTIFACTS, MANIFESTS, MIGRATIONS, TRANSITIONS
from migratio.ledger.retention import Retention
from migratio.ledger.store import JobRequest, Ledger, Migration, utcnow

ROOT = Path(__file__).resolve().parents[3]
STEPS = ("start", "exported", "converted", "uploaded", "registered")
# A cut-off a second from now: every migration ended so far is older.
ALL_ENDED = timedelta(seconds=-1)


def _end(ledger: Ledger, migration_id: str, state: str) -> Migration:
    assert ledger.acquire(migration_id, "d1", 30)
    if state == "done":
        for trigger in STEPS:
            ledger.transition(migration_id, "d1", trigger, trigger, dest_image_id="img-b")
    else:
        ledger.transition(migration_id, "d1", "fail" if state == "failed" else "cancel", state)
    return ledger.get(migration_id)


def _ended(ledger: Ledger, state: str, image: str = "img", dest: str = "site-b") -> Migration:
    return _end(ledger, ledger.create("site-a", dest, image).id, state)


def _rows(ledger: Ledger, table: Table, migration_ids: list[str]) -> int:
    """The table's rows of those migrations."""
    column = table.c.id if table is MIGRATIONS else table.c.migration_id
    count = select(func.count()).select_from(table).where(column.in_(migration_ids))
    with ledger.engine.connect() as connection:
        return int(connection.scalar(count) or 0)


def test_old_ended_migrations_go_with_every_row_of_theirs(ledger: Ledger, tmp_path: Path) -> None:
    job = JobRequest("j1", "site-a", "site-b", "img", origin="queue:migration_site-a")
    [recorded] = ledger.accept_jobs([job])
    old = [
        _end(ledger, recorded.migration_id, "done"),  # superseded below: not the newest
        _ended(ledger, "failed"),
        _ended(ledger, "cancelled"),
    ]
    time.sleep(0.05)
    cut = utcnow()
    time.sleep(0.05)
    newest = _ended(ledger, "done")  # ended after the cut-off, and the newest copy
    running = ledger.create("site-a", "site-b", "other")
    older_than = utcnow() - cut

    archive = tmp_path / "archive.jsonl"
    described = {m.id: reports.describe(ledger, m) for m in old}
    pruned = pruning.prune(ledger, older_than, archive)

    assert pruned.migrations == 3 and not pruned.dry_run
    gone = [m.id for m in old]
    assert pruned.audit_rows == sum(len(d["history"]) for d in described.values())
    for table in (MIGRATIONS, TRANSITIONS):
        assert _rows(ledger, table, gone) == 0
    with pytest.raises(UnknownMigration):
        ledger.get(old[0].id)
    assert ledger.get(newest.id).state == "done" and ledger.get(running.id).state == "queued"
    # The archive holds each whole record, as `show --json` printed it before.
    archived = [json.loads(line) for line in archive.read_text().splitlines()]
    assert sorted(archived, key=lambda d: d["id"]) == sorted(
        described.values(), key=lambda d: d["id"]
    )
    # Its intake job went with it: the same job id seen again is a new migration.
    [again] = ledger.accept_jobs([job])
    assert again.migration_id not in gone


def test_the_newest_done_of_a_route_and_one_owing_cleanup_stay(ledger: Ledger) -> None:
    older = _ended(ledger, "done", image="v1", dest="aws-a")
    newest = _ended(ledger, "done", image="v1", dest="aws-a")
    elsewhere = _ended(ledger, "done", image="v1", dest="site-b")  # its own route
    owing = _ended(ledger, "failed", image="v2")
    ledger.add_artifact(owing.id, "dest_image", "img-half", "site-b")

    plan = Retention(ledger).prunable(utcnow() - ALL_ENDED)
    assert plan.migration_ids == [older.id]
    assert (plan.owing_cleanup, plan.newest_of_route, plan.with_group) == (1, 2, 0)
    assert pruning.prune(ledger, ALL_ENDED, None).migrations == 1
    assert {m.id for m in ledger.migrations()} == {newest.id, elsewhere.id, owing.id}

    # Removed at last: nothing is owed, and it may go.
    ledger.settle_ref(owing.id, "img-half", "removed")
    assert Retention(ledger).prunable(utcnow() - ALL_ENDED).migration_ids == [owing.id]


def test_a_group_goes_whole_or_not_at_all(ledger: Ledger) -> None:
    members = ledger.create_group("site-a", ["site-b", "aws-a"], "img", message="fan-out")
    for member in members:
        _end(ledger, member.id, "failed")
    operations.retry(ledger, members[1].id)  # one member queued again

    plan = Retention(ledger).prunable(utcnow() - ALL_ENDED)
    assert plan.migration_ids == [] and plan.with_group == 1

    _end(ledger, members[1].id, "cancelled")
    plan = Retention(ledger).prunable(utcnow() - ALL_ENDED)
    assert sorted(plan.migration_ids) == sorted(m.id for m in members)


def test_the_delete_asks_again_what_was_planned(ledger: Ledger) -> None:
    """A migration retried between the plan and the delete stays."""
    failed = _ended(ledger, "failed")
    cancelled = _ended(ledger, "cancelled")
    before = utcnow() - ALL_ENDED
    plan = Retention(ledger).prunable(before)
    assert sorted(plan.migration_ids) == sorted([failed.id, cancelled.id])

    operations.retry(ledger, failed.id)
    trail = len(ledger.history(cancelled.id))
    assert Retention(ledger).prune(plan.migration_ids, before) == (1, trail)
    assert ledger.get(failed.id).state == "queued"


def test_a_kept_manifest_and_the_artifacts_go_with_their_migration(ledger: Ledger) -> None:
    superseded = ledger.create("site-a", "aws-a", "v1")
    assert ledger.acquire(superseded.id, "d1", 30)
    for trigger in STEPS:
        if trigger == "registered":
            ledger.keep_manifest(superseded.id, "d1", "snap-1", b"\x01" * 52)
        ledger.transition(superseded.id, "d1", trigger, trigger, dest_image_id="ami-1")
    ledger.add_artifact(superseded.id, "snapshot", "snap-0", "aws-a")
    ledger.settle_ref(superseded.id, "snap-0", "removed")
    _ended(ledger, "done", image="v1", dest="aws-a")

    assert pruning.prune(ledger, ALL_ENDED, None).migrations == 1
    for table in (MANIFESTS, ARTIFACTS):
        assert _rows(ledger, table, [superseded.id]) == 0


def test_a_dry_run_deletes_nothing(ledger: Ledger) -> None:
    failed = _ended(ledger, "failed")
    pruned = pruning.prune(ledger, ALL_ENDED, None, dry_run=True)
    assert (pruned.migrations, pruned.dry_run) == (1, True)
    assert ledger.get(failed.id).state == "failed"
    assert pruning.summary(pruned, None).startswith("would prune 1 migrations ended before ")


def test_a_migration_someone_holds_stays(ledger: Ledger) -> None:
    """A daemon (or an operator's command) holding it may still write to it."""
    failed = _ended(ledger, "failed")
    assert ledger.acquire(failed.id, "operator", 30)
    assert Retention(ledger).prunable(utcnow() - ALL_ENDED).migration_ids == []
    assert Retention(ledger).prune([failed.id], utcnow() - ALL_ENDED) == (0, 0)
    ledger.release(failed.id, "operator")
    assert Retention(ledger).prune([failed.id], utcnow() - ALL_ENDED)[0] == 1


def test_the_prune_benchmark_runs_and_keeps_the_newest_of_each_image(tmp_path: Path) -> None:
    """bench/prune_cost.py at a small size: 1,000 images of 3 migrations each, the
    newest done of each of the 900 images that have one kept, the rest pruned."""
    ran = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "prune_cost.py"), "--migrations", "3000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(ran.stdout)
    assert (figures["pruned"], figures["kept"], figures["audit_rows"]) == (2100, 900, 16800)
