"""Intake dedup: each Redis job id is recorded once, and an image starts one migration.

The ``jobs`` table maps every job id to its migration, so a job redelivered
after a crash is acknowledged and not recorded again; a job for an image and
pair of sites that already has a migration under way joins it. With a
coalescing window, a job for an image that another destination's migration
(created within the window, not yet reading alone) moves from the same source
joins that migration's group, so the source is read once for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migratio.ledger import groups
from migratio.ledger.models import JobRow, MigrationRow
from migratio.ledger.rows import add_audit, migration_of, new_migration
from migratio.ledger.types import Change, JobOutcome, JobRecorded, JobRequest, utcnow
from migratio.ledger.writes import Notify, created
from migratio.machine import ACTIVE

# Any constant shared by every migratio process: the intake's advisory lock.
INTAKE_LOCK_KEY = 0x6D696769  # "migi"

# A migration under way, by what it moves: (image, source site, destination site).
Route = tuple[str, str, str]


def accept(
    session: Session, notify: Notify, jobs: Sequence[JobRequest], coalesce_seconds: float = 0.0
) -> list[JobRecorded]:
    """Record intake jobs, each job id at most once; set-based, so a batch costs a
    handful of statements, not a handful per job. ``coalesce_seconds`` > 0: a new
    migration joins the group of a recent one of the same image and source."""
    if session.get_bind().dialect.name == "postgresql":
        # Two daemons taking jobs for the same image at once must not both start
        # a migration: intake transactions take turns (they last milliseconds).
        # SQLite's BEGIN IMMEDIATE serialises them already.
        session.execute(select(func.pg_advisory_xact_lock(INTAKE_LOCK_KEY)))
    known = _known_jobs(session, jobs)
    running = _under_way(session, jobs)
    peers: dict[groups.Origin, MigrationRow] = {}
    if coalesce_seconds > 0:
        since = utcnow() - timedelta(seconds=coalesce_seconds)
        origins = {(job.image_id, job.source_site) for job in jobs}
        peers = groups.joinable(session, origins, since)
    taken: list[tuple[JobRecorded, MigrationRow]] = []
    results: list[JobRecorded] = []
    for job in jobs:
        if job.job_id in known:
            results.append(JobRecorded(job, JobOutcome.DUPLICATE, known[job.job_id]))
            continue
        route = (job.image_id, job.source_site, job.dest_site)
        outcome = JobOutcome.ATTACHED
        if route not in running:
            running[route] = new_migration(
                job.source_site, job.dest_site, job.image_id, job.job_id, job.base_image_id
            )
            session.add(running[route])
            outcome = JobOutcome.CREATED
            if coalesce_seconds > 0:
                origin = (job.image_id, job.source_site)
                if origin in peers:
                    groups.join(running[route], peers[origin])
                peers[origin] = running[route]
        row = running[route]
        known[job.job_id] = row.id
        taken.append((JobRecorded(job, outcome, row.id), row))
        results.append(taken[-1][0])
    session.flush()  # the new migrations first: the rows below refer to them
    _write_down(session, notify, taken)
    return results


def _known_jobs(session: Session, jobs: Sequence[JobRequest]) -> dict[str, str]:
    """Migration ids of the job ids the ledger has seen already."""
    seen = select(JobRow.job_id, JobRow.migration_id).where(
        JobRow.job_id.in_({job.job_id for job in jobs})
    )
    return {job_id: migration_id for job_id, migration_id in session.execute(seen)}


def _under_way(session: Session, jobs: Sequence[JobRequest]) -> dict[Route, MigrationRow]:
    """The oldest active migration of each route the jobs ask for."""
    query = (
        select(MigrationRow)
        .where(
            MigrationRow.image_id.in_({job.image_id for job in jobs}),
            MigrationRow.state.in_([s.value for s in ACTIVE]),
        )
        .order_by(MigrationRow.created_at.desc())
    )
    # Newest first, so the oldest wins.
    return {(row.image_id, row.source_site, row.dest_site): row for row in session.scalars(query)}


def _write_down(
    session: Session, notify: Notify, taken: Sequence[tuple[JobRecorded, MigrationRow]]
) -> None:
    """The audit rows, changes and job rows of the jobs taken."""
    now = utcnow()
    for result, row in taken:
        origin = f"job {result.job.job_id} from {result.job.origin}"
        if result.outcome is JobOutcome.CREATED:
            created(session, notify, row, origin)
        else:
            message = f"{origin} joined this migration"
            add_audit(session, row.id, row.state, row.state, now, message)
            notify(session, Change(migration_of(row), row.state, message, result.job.job_id))
        session.add(
            JobRow(
                job_id=result.job.job_id,
                migration_id=row.id,
                outcome=result.outcome.value,
                received_at=now,
            )
        )
