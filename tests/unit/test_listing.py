"""``status``'s own read of the ledger (plain SQL through sqlite3 or psycopg) gives
the same snapshots as the ledger's SQLAlchemy reads, filters as asked, counts
what it left out, and takes no write lock. tests/drivers/ledger/ runs these on
PostgreSQL too."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from migratio.errors import LedgerUnavailable
from migratio.ledger.listing import Listing
from migratio.ledger.store import JobRequest, Ledger, Migration
from migratio.ledger.types import MigrationFilter
from migratio.machine import Trigger


def _url(ledger: Ledger) -> str:
    return ledger.engine.url.render_as_string(hide_password=False)


def _varied(ledger: Ledger) -> list[Migration]:
    """Migrations with every kind of column set: JSON, times, flags, errors, jobs."""
    plain = ledger.create("site-a", "site-b", "img-plain")
    joined = ledger.create("site-a", "site-b", "img-joined", job_id="job-first")
    ledger.accept_jobs([JobRequest("job-second", "site-a", "site-b", "img-joined", "test")])
    running = ledger.create("site-b", "site-a", "img-running")
    assert ledger.acquire(running.id, "daemon-1", 300)
    ledger.transition(running.id, "daemon-1", Trigger.START, "test")
    ledger.record(
        running.id,
        "daemon-1",
        bytes_total=3 << 30,
        bytes_done=1 << 30,
        source_image={"name": "template", "properties": {"os_distro": "ubuntu", "n": [1, 2]}},
        transfer_state={"upload_id": "u-1", "parts": [{"n": 1, "etag": "e"}]},
    )
    ledger.request_cancel(running.id)
    failed = ledger.create("site-a", "site-c", "img-failed")
    ledger.transition(failed.id, None, Trigger.START, "test")
    ledger.transition(failed.id, None, Trigger.FAIL, "test", last_error="glance said 500")
    return [ledger.get(m.id) for m in (plain, joined, running, failed)]


def test_the_listing_gives_the_ledgers_own_snapshots(ledger: Ledger) -> None:
    made = _varied(ledger)
    listing = Listing.open(_url(ledger))
    try:
        listed, total = listing.newest(MigrationFilter(), None)
    finally:
        listing.close()
    assert total == len(made)
    assert listed == ledger.migrations(limit=None) == made[::-1]
    running = next(m for m in listed if m.image_id == "img-running")
    assert running.cancel_requested is True and running.lease_expires_at is not None
    assert running.source_image == made[2].source_image  # JSON, nested, exact


def test_the_listing_filters_limits_and_counts_the_rest(ledger: Ledger) -> None:
    made = _varied(ledger)
    listing = Listing.open(_url(ledger))

    def images(wanted: MigrationFilter, limit: int | None = None) -> tuple[list[str], int]:
        listed, total = listing.newest(wanted, limit)
        return [m.image_id for m in listed], total

    try:
        assert images(MigrationFilter(), 2) == (["img-failed", "img-running"], 4)
        assert images(MigrationFilter(), 4) == ([m.image_id for m in made[::-1]], 4)
        assert images(MigrationFilter(states=("queued",))) == (["img-joined", "img-plain"], 2)
        assert images(MigrationFilter(states=("failed", "exporting"))) == (
            ["img-failed", "img-running"],
            2,
        )
        assert images(MigrationFilter(image_id="img-plain")) == (["img-plain"], 1)
        # A job finds the migration it created and the one it joined.
        assert images(MigrationFilter(job_id="job-first")) == (["img-joined"], 1)
        assert images(MigrationFilter(job_id="job-second")) == (["img-joined"], 1)
        assert images(MigrationFilter(site="site-c")) == (["img-failed"], 1)
        assert images(MigrationFilter(site="site-b"), 1) == (["img-running"], 3)
        both = MigrationFilter(states=("queued",), site="site-a", image_id="img-plain")
        assert images(both) == (["img-plain"], 1)
        # Values are bound, never spliced into the SQL.
        assert images(MigrationFilter(image_id="x' OR '1'='1")) == ([], 0)
    finally:
        listing.close()


def test_a_ledger_behind_the_schema_is_refused_by_name(ledger: Ledger) -> None:
    from sqlalchemy import text

    with ledger.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0004'"))
    with pytest.raises(LedgerUnavailable, match="schema is at revision 0004, this migratio needs"):
        Listing.open(_url(ledger))


def test_status_reads_while_a_daemon_holds_the_write_lock(ledger: Ledger) -> None:
    """SQLite only: a daemon in the middle of a write must not hold up ``status``."""
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    ledger.create("site-a", "site-b", "img")
    with closing(sqlite3.connect(ledger.engine.url.database or "", isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        listing = Listing.open(_url(ledger))
        try:
            listed, total = listing.newest(MigrationFilter(), 50)
        finally:
            listing.close()
        writer.execute("ROLLBACK")
    assert ([m.image_id for m in listed], total) == (["img"], 1)
