"""Cancel, in every active state: asked before a daemon claims the migration, or
while a transfer runs (noticed at its next checkpoint). Either way the migration
ends ``cancelled`` and leaves nothing: no destination record, no work-dir file.
"""

from __future__ import annotations

import pytest

from migratio import config
from migratio.errors import TransientError
from migratio.machine import Trigger
from tests.support.engine import (
    CRASH_POINT_IDS,
    CRASH_POINTS,
    EVERY_CHUNK,
    KIB,
    MIB,
    EngineBed,
    payload,
    qcow2_of,
)

CANCELLED = "cancelled by operator"
RAW = payload(256 * KIB, seed=4)
BIG = payload(2 * MIB, seed=5)  # past the safety guard's 1 MiB head


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return qcow2_of(RAW, tmp_path_factory.mktemp("qcow2"))


def _assert_cancelled(bed: EngineBed, migration_id: str, state: str) -> None:
    """Cancelled from ``state``, and nothing of it left anywhere."""
    cancelled = bed.ledger.get(migration_id)
    assert (cancelled.state, cancelled.last_error, cancelled.lease_owner) == (
        "cancelled",
        CANCELLED,
        None,
    )
    last = bed.ledger.history(migration_id)[-1]
    assert (last.from_state, last.to_state, last.message) == (state, "cancelled", CANCELLED)
    assert bed.destination.records == {}
    assert all(status == "removed" for *_, status in bed.artifacts(migration_id))
    assert not (bed.work_dir / migration_id).exists()
    assert bed.source.open_streams == 0


def test_a_queued_migration_cancelled_is_never_started(engine_bed: EngineBed) -> None:
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    bed.ledger.request_cancel(migration_id)

    bed.run()

    _assert_cancelled(bed, migration_id, "queued")
    assert bed.states(migration_id) == [(None, "queued"), ("queued", "cancelled")]
    assert bed.source.calls == ["close"]


# Engine bug: registering settles its record "kept" before the transition to done
# commits. Killed in between and then cancelled (or failed), the migration's
# cleanup skips the kept record; the stray-record search happens to remove it, but
# the ledger still says "kept" (and an image made of it, an AMI, stays: see below).
@pytest.mark.parametrize(
    ("trigger", "before", "state"),
    [
        pytest.param(*point, id=name)
        for point, name in zip(CRASH_POINTS, CRASH_POINT_IDS, strict=True)
    ],
)
def test_a_migration_left_in_any_state_and_cancelled_is_cleaned_up(
    engine_bed: EngineBed, qcow2: bytes, trigger: str, before: bool, state: str
) -> None:
    """Left by a dead daemon with whatever it made (staged and converted files, a
    destination record, full or not), then cancelled before another claims it."""
    bed = engine_bed
    bed.destination.required_disk_format = "raw"
    migration_id = bed.submit(bed.source.add_image(qcow2, disk_format="qcow2").id).id
    dead = bed.supervisor_to_kill()
    bed.crash_at_transition(dead, trigger, before=before)
    bed.run(dead)
    assert bed.ledger.get(migration_id).state == state
    made = len(bed.destination.records)
    bed.ledger.request_cancel(migration_id)
    bed.expire_lease(migration_id)
    calls_before = len(bed.destination.calls)

    bed.run(bed.supervisor("daemon-2"))

    _assert_cancelled(bed, migration_id, state)
    # Only what a cancel does: look for the record, remove what was made.
    new_calls = bed.destination.calls[calls_before:]
    assert set(new_calls) <= {"find_record", "remove", "close"}
    assert new_calls.count("remove") == made


@pytest.mark.parametrize(
    ("stream", "wants_file", "state"),
    [("receive", False, "uploading"), ("receive", True, "uploading"), ("read", True, "exporting")],
    ids=["streamed-upload", "file-upload", "download-to-work-dir"],
)
def test_a_cancel_during_a_transfer_stops_it_at_the_next_checkpoint(
    engine_bed: EngineBed, stream: str, wants_file: bool, state: str
) -> None:
    bed = engine_bed
    bed.configure(progress_seconds=EVERY_CHUNK)  # a checkpoint between any two chunks
    bed.destination.wants_file = wants_file
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    site = bed.destination if stream == "receive" else bed.source
    site.at_byte(stream, 512 * KIB, lambda: bed.ledger.request_cancel(migration_id))
    never = []
    site.at_byte(stream, len(BIG), lambda: never.append("reached the end"))

    bed.run()

    _assert_cancelled(bed, migration_id, state)
    assert never == []  # stopped midway, not at the end
    assert "register" not in bed.destination.calls
    assert 512 * KIB <= bed.ledger.get(migration_id).bytes_done < len(BIG)


def test_a_cancel_does_not_wait_for_a_scheduled_retry(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.configure(retry=config.RetryPolicy(max_attempts=5, base_delay=60, max_delay=60))
    bed.destination.fail("create_record", TransientError("site-b: HTTP 503"), times=None)
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    bed.run(until=lambda: bed.destination.count("create_record") == 1)
    assert bed.ledger.get(migration_id).attempt == 1
    bed.ledger.request_cancel(migration_id)

    bed.run()  # fails after RUN_LIMIT if the cancel waited the minute for the retry

    _assert_cancelled(bed, migration_id, "uploading")
    assert bed.destination.count("create_record") == 1


def test_an_operator_ends_a_migration_no_daemon_holds_at_once(engine_bed: EngineBed) -> None:
    """``end_now`` (the CLI's cancel and fail): no step runs, cleanup does."""
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    dead = bed.supervisor_to_kill()
    bed.crash_at_transition(dead, Trigger.UPLOADED, before=True)
    bed.run(dead)
    operator = bed.supervisor("operator")
    assert not operator.end_now(migration_id, Trigger.CANCEL, CANCELLED)  # still held

    bed.expire_lease(migration_id)
    assert operator.end_now(migration_id, Trigger.CANCEL, CANCELLED)

    _assert_cancelled(bed, migration_id, "uploading")
    assert bed.destination.count("receive") == 1


@pytest.mark.parametrize("killed_after", [None, Trigger.START, Trigger.EXPORTED])
def test_an_operator_ends_a_migration_that_never_reached_its_destination_without_opening_it(
    engine_bed: EngineBed, killed_after: Trigger | None
) -> None:
    """Queued, exporting, converting: nothing of it can be there, so the cancel needs
    no connection to a site that may well be down; staged files are removed all the same."""
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    if killed_after is not None:
        dead = bed.supervisor_to_kill()
        bed.crash_at_transition(dead, killed_after, before=False)
        bed.run(dead)
        bed.expire_lease(migration_id)
    state = bed.ledger.get(migration_id).state
    bed.sites.opened.clear()

    assert bed.supervisor("operator").end_now(migration_id, Trigger.CANCEL, CANCELLED)

    _assert_cancelled(bed, migration_id, state)
    assert bed.sites.opened == []


def test_a_cancel_after_an_image_was_made_of_the_record_removes_both(
    engine_bed: EngineBed,
) -> None:
    """An image made of the record (as an AMI of its snapshot) by a registering
    that was killed before it committed: a cancel must remove both."""
    bed = engine_bed
    bed.destination.registers_image = True
    migration_id = bed.submit(bed.source.add_image(RAW).id).id
    dead = bed.supervisor_to_kill()
    bed.crash_at_transition(dead, Trigger.REGISTERED, before=True)
    bed.run(dead)
    assert len(bed.destination.records) == 2
    bed.ledger.request_cancel(migration_id)
    bed.expire_lease(migration_id)

    bed.run(bed.supervisor("daemon-2"))

    assert bed.ledger.get(migration_id).state == "cancelled"
    assert bed.destination.records == {}
