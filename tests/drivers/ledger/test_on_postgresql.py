"""What only a real PostgreSQL server shows, and the unit tests whose outcome
depends on the database, run again on one (tests/unit runs them on SQLite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from migratio.errors import JobConflict, LedgerError, LedgerUnavailable
from migratio.ledger.database import make_engine, upgrade
from migratio.ledger.store import Ledger
from tests.support.ledgers import empty_ledger_engine
from tests.unit import test_caps, test_ledger_errors, test_listing, test_metrics

test_a_job_id_recorded_meanwhile_is_a_job_conflict = (
    test_ledger_errors.test_a_job_id_recorded_meanwhile_is_a_job_conflict
)
test_intake_outcomes_are_counted = test_metrics.test_intake_outcomes_are_counted
test_the_listing_gives_the_ledgers_own_snapshots = (
    test_listing.test_the_listing_gives_the_ledgers_own_snapshots
)
test_the_listing_filters_limits_and_counts_the_rest = (
    test_listing.test_the_listing_filters_limits_and_counts_the_rest
)
test_a_ledger_behind_the_schema_is_refused_by_name = (
    test_listing.test_a_ledger_behind_the_schema_is_refused_by_name
)
test_the_census_counts_by_state_and_pair_and_the_undelivered_feedback = (
    test_metrics.test_the_census_counts_by_state_and_pair_and_the_undelivered_feedback
)

test_the_claim_starts_no_queued_migration_to_a_full_site_and_says_why_once = (
    test_caps.test_the_claim_starts_no_queued_migration_to_a_full_site_and_says_why_once
)
test_every_held_back_migration_gets_its_note_however_many_wait = (
    test_caps.test_every_held_back_migration_gets_its_note_however_many_wait
)
test_daemons_claiming_at_the_same_moment_start_one_migration_to_a_one_slot_site = (
    test_caps.test_daemons_claiming_at_the_same_moment_start_one_migration_to_a_one_slot_site
)


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[Ledger]:
    """A fresh ledger at the newest schema on the session's PostgreSQL."""
    engine = empty_ledger_engine(postgres_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def test_a_value_the_ledger_cannot_store_is_a_ledger_error(ledger: Ledger) -> None:
    """SQLite stores strings of any length; PostgreSQL refuses what its columns cannot hold."""
    with pytest.raises(LedgerError) as raised:
        ledger.create("site-a", "site-b", "img", job_id="j" * 65)
    assert not isinstance(raised.value, LedgerUnavailable | JobConflict)
    assert str(raised.value).startswith("ledger error: ")


def test_a_postgres_ledger_connection_has_the_statement_timeout(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW statement_timeout")) == "1min"
    finally:
        engine.dispose()
