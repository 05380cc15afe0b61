"""Fan-out groups in the ledger, on SQLite and PostgreSQL: created in one
transaction; Redis jobs for the same image and source within the coalescing
window join one group; a member asks whether its siblings are still active."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from migratio.ledger.models import MigrationRow
from migratio.ledger.store import JobOutcome, JobRequest, Ledger, utcnow


def test_a_group_is_created_at_once_and_knows_its_active_members(ledger: Ledger) -> None:
    members = ledger.create_group("site-a", ["site-b", "site-c"], "img", message="test")
    group = str(members[0].group_id)
    assert [m.id for m in ledger.group_members(group)] == [m.id for m in members]
    assert ledger.group_others_active(group, members[0].id)
    with ledger.engine.begin() as connection:
        connection.execute(
            update(MigrationRow).where(MigrationRow.id == members[1].id).values(state="failed")
        )
    assert not ledger.group_others_active(group, members[0].id)
    assert ledger.group_others_active(group, members[1].id)
    [alone] = ledger.create_group("site-a", ["site-b"], "img-2", message="test")
    assert alone.group_id is None


def _job(n: int, dest: str, image: str = "img", source: str = "site-a") -> JobRequest:
    return JobRequest(f"job-{n}", source, dest, image, "test queue")


def _age(ledger: Ledger, migration_id: str, seconds: float) -> None:
    with ledger.engine.begin() as connection:
        connection.execute(
            update(MigrationRow)
            .where(MigrationRow.id == migration_id)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def test_jobs_within_the_coalescing_window_join_one_group(ledger: Ledger) -> None:
    first = ledger.accept_jobs([_job(1, "site-b"), _job(2, "site-c")], coalesce_seconds=3)
    later = ledger.accept_jobs([_job(3, "aws-a")], coalesce_seconds=3)
    again = ledger.accept_jobs([_job(4, "site-b")], coalesce_seconds=3)  # same route: joins it
    other = ledger.accept_jobs(
        [_job(5, "site-c", source="site-b"), _job(6, "site-b", image="img-other")],
        coalesce_seconds=3,
    )
    grouped = {ledger.get(r.migration_id).group_id for r in [*first, *later]}
    assert len(grouped) == 1 and None not in grouped
    assert again[0].outcome is JobOutcome.ATTACHED
    assert again[0].migration_id == first[0].migration_id
    assert [ledger.get(r.migration_id).group_id for r in other] == [None, None]


def test_jobs_outside_the_window_or_after_a_lone_read_began_stay_alone(ledger: Ledger) -> None:
    old = ledger.accept_jobs([_job(1, "site-b")], coalesce_seconds=3)[0].migration_id
    _age(ledger, old, 10)
    late = ledger.accept_jobs([_job(2, "site-c")], coalesce_seconds=3)[0].migration_id
    assert ledger.get(old).group_id is None and ledger.get(late).group_id is None
    # Already reading alone (past queued, no group): a newcomer reads on its own.
    with ledger.engine.begin() as connection:
        connection.execute(
            update(MigrationRow).where(MigrationRow.id == late).values(state="exporting")
        )
    newcomer = ledger.accept_jobs([_job(3, "aws-a")], coalesce_seconds=3)[0].migration_id
    assert ledger.get(newcomer).group_id is None
    off = ledger.accept_jobs([_job(4, "site-b"), _job(5, "site-c", image="i2")])
    assert [ledger.get(r.migration_id).group_id for r in off] == [None, None]
