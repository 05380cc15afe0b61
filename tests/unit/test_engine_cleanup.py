"""Cleanup that cannot finish now: the migration still ends, the leftover stays in
the ledger with its reason, and a later sweep (the janitor's, or the next start's)
removes it once its retry is due.
"""

from __future__ import annotations

import pytest

from migratio import config
from migratio.errors import PermanentError, TransientError
from migratio.machine import Trigger
from tests.support.engine import KIB, EngineBed, payload

DATA = payload(200 * KIB, seed=7)
# Removals retried no sooner than 30 s later: only the test says when one is due
# (``make_due``), whatever the machine's load.
SLOW_REMOVALS = config.RetryPolicy(max_attempts=3, base_delay=60, max_delay=60)
REFUSED = "site-b: HTTP 403: quota exceeded"


def _fail_at_register(bed: EngineBed) -> str:
    """A migration that fails in registering: its record has every byte."""
    bed.destination.fail("register", PermanentError(REFUSED))
    return bed.submit(bed.source.add_image(DATA).id).id


@pytest.mark.parametrize(
    ("error", "noted"),
    [
        (TransientError("site-b: HTTP 503: down"), "site-b: HTTP 503: down"),
        (RuntimeError("driver bug"), "RuntimeError: driver bug"),
    ],
    ids=["site-down", "unexpected"],
)
def test_a_failed_removal_is_recorded_and_swept_once_due(
    engine_bed: EngineBed, error: Exception, noted: str
) -> None:
    bed = engine_bed
    bed.configure(retry=SLOW_REMOVALS)
    bed.destination.fail("remove", error, times=None)
    migration_id = _fail_at_register(bed)

    supervisor = bed.run()

    failed = bed.ledger.get(migration_id)
    assert (failed.state, failed.last_error) == ("failed", REFUSED)  # ended all the same
    (record_id,) = bed.records_of(migration_id)
    (leftover,) = bed.ledger.artifacts(migration_id)
    assert (leftover.ref, leftover.status, leftover.last_error, leftover.attempts) == (
        record_id,
        "present",
        noted,
        1,
    )
    supervisor.sweep()  # not due yet (in 30-60 s): not even tried
    assert bed.destination.count("remove") == 1
    assert bed.ledger.artifacts(migration_id) == [leftover]

    bed.destination.heal("remove")
    bed.make_due(migration_id)
    supervisor.sweep()

    assert bed.destination.records == {}
    (removed,) = bed.ledger.artifacts(migration_id, status=None)
    assert (removed.status, removed.last_error) == ("removed", None)
    assert bed.ledger.get(migration_id).state == "failed"


def test_a_removal_that_keeps_failing_is_retried_on_backoff(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.configure(retry=SLOW_REMOVALS)
    bed.destination.fail("remove", TransientError("site-b: HTTP 503"), times=None)
    migration_id = _fail_at_register(bed)
    supervisor = bed.run()

    for attempts in (2, 3):
        bed.make_due(migration_id)
        supervisor.sweep()
        (leftover,) = bed.ledger.artifacts(migration_id)
        assert (leftover.attempts, leftover.last_error) == (attempts, "site-b: HTTP 503")
    assert bed.destination.count("remove") == 3
    assert len(bed.destination.records) == 1


def test_the_janitor_sweeps_while_the_daemon_runs(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.destination.fail("remove", TransientError("site-b: HTTP 503"))  # once
    migration_id = _fail_at_register(bed)

    bed.run(until=lambda: bed.destination.count("remove") == 2)

    assert bed.ledger.get(migration_id).state == "failed"
    assert bed.destination.records == {}
    assert [a[2] for a in bed.artifacts(migration_id)] == ["removed"]


def test_a_cleanup_cut_short_by_a_kill_is_finished_at_the_next_start(
    engine_bed: EngineBed,
) -> None:
    """Killed between the transition to done and its cleanup: the staged file is
    still in the work dir, and the next daemon's start removes it."""
    bed = engine_bed
    bed.destination.wants_file = True  # so a file is staged in the work dir
    migration_id = bed.submit(bed.source.add_image(DATA).id).id
    dead = bed.supervisor_to_kill()
    bed.crash_at_transition(dead, Trigger.REGISTERED, before=False)
    bed.run(dead)
    assert bed.ledger.get(migration_id).state == "done"
    assert bed.leftovers(migration_id) == ["source.raw"]

    bed.run(bed.supervisor("daemon-2"))

    assert bed.leftovers(migration_id) == []
    assert not (bed.work_dir / migration_id).exists()
    record_id = bed.ledger.get(migration_id).dest_image_id
    assert bed.artifacts(migration_id) == [
        ("file", "source.raw.part", "removed"),
        ("file", "source.raw", "removed"),
        ("dest_image", record_id, "kept"),
    ]
    assert bytes(bed.destination.record(record_id).data) == DATA
