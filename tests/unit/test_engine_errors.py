"""How the engine meets each class of error, in the state where it happens.

Transient: retried on the ledger's backoff schedule, in the same state, until the
budget is spent. Permanent: failed at once, with cleanup. Unexpected (a bug in a
driver): retried like a transient error, never re-claimed at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from migratio import config
from migratio.drivers.base import ImageStatus
from migratio.drivers.stub import Scriptable, StubSite
from migratio.errors import PermanentError, TransientError
from migratio.ledger.store import Migration
from tests.support.engine import (
    DESTINATION,
    DESTINATION_ONLY,
    HAPPY_PATH,
    KIB,
    SOURCE,
    EngineBed,
    happy_path_with_notes,
    payload,
    qcow2_of,
    sha512,
)

DATA = payload(200 * KIB)

# Where each driver call happens, and how often a clean run makes it.
CALLS = {
    ("source", "describe"): ("exporting", 1),
    ("source", "read"): ("exporting", 2),  # probed at exporting, streamed at uploading
    ("destination", "find_copy"): ("exporting", 1),
    ("destination", "create_record"): ("uploading", 1),
    ("destination", "receive"): ("uploading", 1),
    ("destination", "register"): ("registering", 1),
}
CALL_IDS = [method for _, method in CALLS]
# One call per state, the one that leaves the most behind when it fails.
LAST_CALLS = [("source", "read"), ("destination", "receive"), ("destination", "register")]
LAST_CALL_IDS = [method for _, method in LAST_CALLS]
RETRY_NOTE = re.compile(r"attempt (\d+) failed, retrying in (\d+\.\d)s: (.*)")


def _site(bed: EngineBed, role: str) -> StubSite:
    return bed.source if role == "source" else bed.destination


def _start(bed: EngineBed) -> str:
    return bed.submit(bed.source.add_image(DATA).id).id


def _retry_notes(bed: EngineBed, migration_id: str) -> list[tuple[str, int, str]]:
    """(state, attempt, reason) of each "attempt N failed, retrying in ..." note."""
    found = []
    for state, message in bed.notes(migration_id):
        match = RETRY_NOTE.fullmatch(message)
        assert match, message
        found.append((state, int(match[1]), match[3]))
    return found


def _assert_failed(bed: EngineBed, migration_id: str, state: str, reason: str) -> None:
    """Failed from ``state`` with ``reason``, and nothing of it left anywhere."""
    failed = bed.ledger.get(migration_id)
    assert (failed.state, failed.last_error, failed.lease_owner) == ("failed", reason, None)
    last = bed.ledger.history(migration_id)[-1]
    assert (last.from_state, last.to_state, last.message) == (state, "failed", reason)
    assert bed.records_of(migration_id) == []
    assert all(status == "removed" for *_, status in bed.artifacts(migration_id))
    assert not (bed.work_dir / migration_id).exists()
    assert bed.source.open_streams == 0


def _snapshots(bed: EngineBed, site: Scriptable, method: str) -> list[tuple[float, Migration]]:
    """(when, the migration as the ledger had it) at every call of ``method``."""
    seen: list[tuple[float, Migration]] = []

    def snapshot() -> None:
        (migration,) = bed.ledger.migrations()
        seen.append((time.monotonic(), migration))

    site.on_call(method, snapshot, times=None)
    return seen


# -- transient ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "method"), CALLS, ids=CALL_IDS)
def test_a_transient_error_is_retried_in_its_state_then_the_migration_ends_done(
    engine_bed: EngineBed, role: str, method: str
) -> None:
    bed = engine_bed
    state, clean_calls = CALLS[(role, method)]
    reason = f"{role}: HTTP 503: try later"
    site = _site(bed, role)
    site.fail(method, TransientError(reason), times=2)
    seen = _snapshots(bed, site, method)
    migration_id = _start(bed)

    bed.run()

    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    assert (done.attempt, done.last_error) == (0, None)  # success ends the streak
    assert bed.states(migration_id) == happy_path_with_notes(state, 2)
    assert _retry_notes(bed, migration_id) == [(state, 1, reason), (state, 2, reason)]
    assert site.count(method) == clean_calls + 2
    # Each attempt starts with the failures so far recorded on the migration.
    assert [(m.attempt, m.last_error) for _, m in seen[:3]] == [
        (0, None),
        (1, reason),
        (2, reason),
    ]
    assert len(bed.records_of(migration_id)) == 1  # a retry reuses the record
    assert bed.destination.record(done.dest_image_id).sha512 == sha512(DATA)


@pytest.mark.parametrize(
    ("where", "method", "error", "state"),
    [
        ("destination", "create_record", TransientError("site-b: HTTP 503"), "uploading"),
        ("destination", "register", RuntimeError("driver bug"), "registering"),
        ("sites", "destination", RuntimeError("cannot open site"), "queued"),
    ],
    ids=["transient", "unexpected-in-a-step", "unexpected-opening-a-site"],
)
def test_a_failed_attempt_waits_its_backoff_before_the_next(
    engine_bed: EngineBed, where: str, method: str, error: Exception, state: str
) -> None:
    """The delay is in the ledger (``next_attempt_at``) and honoured: a fault that
    repeats is never claimed again at once."""
    bed = engine_bed
    bed.configure(retry=config.RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=1.0))
    scripted: Scriptable = bed.sites if where == "sites" else bed.destination
    scripted.fail(method, error)
    seen = _snapshots(bed, scripted, method)
    migration_id = _start(bed)

    bed.run()

    assert bed.ledger.get(migration_id).state == "done"
    ((note_state, note),) = bed.notes(migration_id)
    match = RETRY_NOTE.fullmatch(note)
    assert match and (note_state, match[1], match[3]) == (state, "1", str(error))
    delay = float(match[2])
    assert 0.1 <= delay <= 0.2  # attempt 1: half the base delay fixed, half jitter
    (failed_at, _), (retried_at, retry) = seen
    assert (retry.attempt, retry.last_error) == (1, str(error))
    noted_at = next(row.at for row in bed.ledger.history(migration_id) if row.message == note)
    assert abs((retry.next_attempt_at - noted_at).total_seconds() - delay) <= 0.05
    assert retried_at - failed_at >= delay - 0.05


@pytest.mark.parametrize(
    ("role", "method", "error"),
    [
        *[(role, method, TransientError(f"{role}: timed out")) for role, method in LAST_CALLS],
        ("destination", "receive", RuntimeError("driver bug")),
    ],
    ids=[*LAST_CALL_IDS, "unexpected"],
)
def test_a_migration_that_keeps_failing_gives_up_after_its_budget(
    engine_bed: EngineBed, role: str, method: str, error: Exception
) -> None:
    bed = engine_bed
    state, _ = CALLS[(role, method)]
    site = _site(bed, role)
    site.fail(method, error, times=None)
    migration_id = _start(bed)

    bed.run()

    _assert_failed(bed, migration_id, state, f"gave up after 3 attempts: {error}")
    assert _retry_notes(bed, migration_id) == [(state, 1, str(error)), (state, 2, str(error))]
    assert site.count(method) == 3


# -- permanent ---------------------------------------------------------------------


@pytest.mark.parametrize(("role", "method"), CALLS, ids=CALL_IDS)
def test_a_permanent_error_fails_the_migration_at_once_and_cleans_up(
    engine_bed: EngineBed, role: str, method: str
) -> None:
    bed = engine_bed
    state, _ = CALLS[(role, method)]
    reason = f"{role}: HTTP 403: not allowed"
    site = _site(bed, role)
    site.fail(method, PermanentError(reason))
    migration_id = _start(bed)

    bed.run()

    _assert_failed(bed, migration_id, state, reason)
    assert bed.notes(migration_id) == []
    assert site.count(method) == 1
    assert bed.ledger.get(migration_id).attempt == 0


def _missing(bed: EngineBed) -> tuple[str, str, str]:
    return "no-such-image", "exporting", f"site {SOURCE}: image no-such-image does not exist"


def _unavailable(bed: EngineBed) -> tuple[str, str, str]:
    image = bed.source.add_image(DATA, status=ImageStatus.UNAVAILABLE)
    return image.id, "exporting", f"source image {image.id} is unavailable, not available"


def _unsafe(bed: EngineBed) -> tuple[str, str, str]:
    qcow2 = qcow2_of(payload(64 * KIB), bed.work_dir.parent / "unsafe")
    image = bed.source.add_image(qcow2, disk_format="raw")
    return image.id, "exporting", "declared raw but the bytes are qcow2"


def _not_convertible(bed: EngineBed) -> tuple[str, str, str]:
    bed.destination.required_disk_format = "raw"
    image = bed.source.add_image(DATA, disk_format="iso")
    reason = (
        f"source image {image.id} is declared 'iso', not a disk image that can be "
        f"converted to the raw {DESTINATION} requires"
    )
    return image.id, "exporting", reason


def _corrupted_at_destination(bed: EngineBed) -> tuple[str, str, str]:
    def corrupt() -> None:
        for record in bed.destination.records.values():
            record.data[0] ^= 0xFF

    bed.destination.on_call("register", corrupt)
    image = bed.source.add_image(DATA)
    return image.id, "registering", "sha512 differs from the bytes sent"


@pytest.mark.parametrize(
    "case", [_missing, _unavailable, _unsafe, _not_convertible, _corrupted_at_destination]
)
def test_what_retrying_cannot_fix_fails_with_a_clear_reason(
    engine_bed: EngineBed, case: Callable[[EngineBed], tuple[str, str, str]]
) -> None:
    bed = engine_bed
    image_id, state, reason = case(bed)
    migration_id = bed.submit(image_id).id

    bed.run()

    failed = bed.ledger.get(migration_id)
    assert failed.last_error and failed.last_error.endswith(reason)
    _assert_failed(bed, migration_id, state, failed.last_error)
    assert bed.notes(migration_id) == []
    if state == "exporting":
        assert "create_record" not in bed.destination.calls


@pytest.mark.parametrize(
    "reports_sha512",
    [True, False],
    ids=["site-reports-its-sha512", "site-reports-none"],
)
def test_a_destination_that_stores_other_bytes_than_it_was_sent_fails_the_migration(
    engine_bed: EngineBed, reports_sha512: bool
) -> None:
    """The bytes left the engine verified; the site kept others (a storage fault)
    and, asked, reports the sha512 of what it holds."""
    bed = engine_bed
    bed.destination.returns_sha512 = reports_sha512

    def corrupt() -> None:
        for record in bed.destination.records.values():
            record.data[0] ^= 0xFF

    bed.destination.at_byte("receive", len(DATA), corrupt)
    migration_id = _start(bed)

    bed.run()

    failed = bed.ledger.get(migration_id)
    assert failed.state == "failed"
    assert failed.last_error and "sha512 differs from the bytes sent" in failed.last_error
    assert bed.destination.records == {}


def test_a_source_image_still_being_uploaded_is_waited_for(engine_bed: EngineBed) -> None:
    bed = engine_bed
    image = bed.source.add_image(DATA, status=ImageStatus.PENDING)

    def finish_upload() -> None:
        if bed.source.count("describe") == 2:  # the first look saw it pending
            image.status = ImageStatus.AVAILABLE

    bed.source.on_call("describe", finish_upload, times=None)
    migration_id = bed.submit(image.id).id

    bed.run()

    assert bed.ledger.get(migration_id).state == "done"
    assert _retry_notes(bed, migration_id) == [
        ("exporting", 1, f"source image {image.id} is pending, not yet available")
    ]


# -- sites that cannot play their role ---------------------------------------------


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            DESTINATION_ONLY,
            f"{DESTINATION_ONLY}: type: aws sites are destinations only: "
            "images migrate to them, not from them",
        ),
        ("site-x", "site-x: unknown site (known: site-a, site-aws, site-b)"),
    ],
    ids=["destination-only", "unknown"],
)
def test_a_site_that_cannot_be_a_source_fails_the_migration_with_the_reason(
    engine_bed: EngineBed, source: str, reason: str
) -> None:
    bed = engine_bed
    image = bed.destination.add_image(DATA)  # the stub could serve it: the config says no
    migration_id = bed.submit(image.id, source=source).id

    bed.run()

    failed = bed.ledger.get(migration_id)
    assert failed.state == "failed"
    assert failed.last_error and failed.last_error.endswith(reason)
    assert bed.states(migration_id) == [(None, "queued"), ("queued", "failed")]
    assert bed.sites.opened == []
    assert bed.destination.calls == []


def test_a_destination_only_site_takes_images(engine_bed: EngineBed) -> None:
    bed = engine_bed
    image = bed.source.add_image(DATA)
    migration_id = bed.submit(image.id, to=DESTINATION_ONLY).id

    bed.run()

    assert bed.ledger.get(migration_id).state == "done"
    assert bed.states(migration_id) == HAPPY_PATH
    assert bed.sites.opened == [("source", SOURCE), ("destination", DESTINATION_ONLY)]
