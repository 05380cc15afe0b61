"""A migration interrupted anywhere is finished by the next daemon, with exactly
one destination record and nothing done twice that was already done.

A crash is simulated in-process (``Crash``: it escapes every handler, so the dead
daemon keeps its lease and writes nothing more); time passing for its lease is
``expire_lease``. A stop is the daemon's own SIGTERM path (``Supervisor.stop``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from migratio.drivers.base import SOURCE_UUID, DestinationImage, RecordSpec, RecordStatus
from migratio.supervisor import Supervisor
from tests.support.engine import (
    CRASH_POINT_IDS,
    CRASH_POINTS,
    EVERY_CHUNK,
    HAPPY_PATH,
    KIB,
    MIB,
    EngineBed,
    happy_path_with_notes,
    payload,
    qcow2_of,
    sha512,
)

RAW = payload(256 * KIB, seed=2)  # the disk inside the qcow2 of the converted path
BIG = payload(2 * MIB + 100 * KIB, seed=3)  # past the safety guard's 1 MiB head
TAKEN_OVER = "taken over from daemon-dead after its lease expired"


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return qcow2_of(RAW, tmp_path_factory.mktemp("qcow2"))


def _finish_after(bed: EngineBed, migration_id: str, how: str) -> Supervisor:
    """Let a second daemon finish what the first left (after a crash its lease
    must expire first)."""
    if how == "crash":
        bed.expire_lease(migration_id)
    return bed.run(bed.supervisor("daemon-2"))


def _assert_finished_once(bed: EngineBed, migration_id: str, sent: bytes) -> None:
    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    assert bed.records_of(migration_id) == [done.dest_image_id]
    record = bed.destination.record(done.dest_image_id)
    assert bytes(record.data) == sent
    assert record.sha512 == sha512(sent) == done.dest_sha512
    assert record.properties[SOURCE_UUID] == done.image_id
    kept = [a for a in bed.artifacts(migration_id) if a[2] != "removed"]
    assert kept == [("dest_image", done.dest_image_id, "kept")]
    assert not (bed.work_dir / migration_id).exists()
    assert bed.source.open_streams == 0


@pytest.mark.parametrize(
    ("path", "trigger", "before", "state"),
    [
        *[
            pytest.param("converted", *point, id=f"converted-{name}")
            for point, name in zip(CRASH_POINTS, CRASH_POINT_IDS, strict=True)
        ],
        # The streamed path differs from the staged one from uploading on.
        *[
            pytest.param("streamed", *point, id=f"streamed-{name}")
            for point, name in zip(CRASH_POINTS, CRASH_POINT_IDS, strict=True)
            if point[2] in ("uploading", "registering")
        ],
    ],
)
def test_a_daemon_killed_in_any_state_is_taken_over_and_finished_once(
    engine_bed: EngineBed, qcow2: bytes, path: str, trigger: str, before: bool, state: str
) -> None:
    bed = engine_bed
    if path == "converted":
        bed.destination.required_disk_format = "raw"
        image = bed.source.add_image(qcow2, disk_format="qcow2")
    else:
        image = bed.source.add_image(RAW)
    migration_id = bed.submit(image.id).id
    dead = bed.supervisor_to_kill()
    bed.crash_at_transition(dead, trigger, before=before)

    bed.run(dead)

    left = bed.ledger.get(migration_id)
    assert (left.state, left.lease_owner) == (state, "daemon-dead")
    _finish_after(bed, migration_id, "crash")

    _assert_finished_once(bed, migration_id, RAW)
    assert bed.states(migration_id) == happy_path_with_notes(state, 1)
    assert bed.notes(migration_id) == [(state, TAKEN_OVER)]
    # Nothing done twice that was done: one record, one upload, one download to stage.
    assert bed.destination.count("create_record") == 1
    assert bed.destination.count("receive") == 1
    if path == "converted":
        assert bed.source.reads == [(image.id, 0)]


def _stopper(bed: EngineBed, supervisor: Supervisor, how: str) -> Callable[[], None]:
    """What ends ``supervisor`` where it is called: a kill or a stop (SIGTERM)."""
    return bed.crash(supervisor) if how == "crash" else supervisor.stop


@pytest.mark.parametrize("how", ["crash", "stop"])
@pytest.mark.parametrize("site", ["restarts", "resumes", "breaks"])
def test_an_upload_interrupted_midway_ends_in_one_complete_record(
    engine_bed: EngineBed, how: str, site: str
) -> None:
    """restarts: Glance (an interrupted record is empty again); resumes: the SSH
    site (it keeps what it got); breaks: a record that cannot be continued."""
    bed = engine_bed
    bed.destination.resumable = site == "resumes"
    if site == "breaks":
        bed.destination.interrupted_status = RecordStatus.BROKEN
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    first = bed.supervisor_to_kill() if how == "crash" else bed.supervisor("daemon-1")
    bed.destination.at_byte("receive", 512 * KIB, _stopper(bed, first, how))

    bed.run(first)

    left = bed.ledger.get(migration_id)
    assert (left.state, left.last_error, left.attempt) == ("uploading", None, 0)
    assert left.lease_owner == ("daemon-dead" if how == "crash" else None)
    (interrupted,) = bed.destination.records.values()
    assert interrupted.status is bed.destination.interrupted_status
    resume_from = len(interrupted.data)
    if site == "resumes":
        assert 512 * KIB <= resume_from < len(BIG)
    else:
        assert resume_from == 0

    _finish_after(bed, migration_id, how)

    _assert_finished_once(bed, migration_id, BIG)
    notes = [("uploading", TAKEN_OVER)] if how == "crash" else []
    assert bed.notes(migration_id) == notes
    assert bed.states(migration_id) == happy_path_with_notes("uploading", len(notes))
    # Probe, first upload, then the rest from where the record was left.
    assert bed.source.reads == [(image.id, 0), (image.id, 0), (image.id, resume_from)]
    done = bed.ledger.get(migration_id)
    if site == "breaks":
        assert bed.artifacts(migration_id) == [
            ("dest_image", interrupted.id, "removed"),
            ("dest_image", done.dest_image_id, "kept"),
        ]
    else:
        assert done.dest_image_id == interrupted.id


@pytest.mark.parametrize("how", ["crash", "stop"])
def test_a_download_to_the_work_dir_interrupted_midway_is_done_again(
    engine_bed: EngineBed, how: str
) -> None:
    bed = engine_bed
    bed.destination.wants_file = True  # staged, not converted
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    first = bed.supervisor_to_kill() if how == "crash" else bed.supervisor("daemon-1")
    bed.source.at_byte("read", 512 * KIB, _stopper(bed, first, how))

    bed.run(first)

    left = bed.ledger.get(migration_id)
    assert left.state == "exporting"
    assert bed.leftovers(migration_id) == ["source.raw.part"]
    _finish_after(bed, migration_id, how)

    _assert_finished_once(bed, migration_id, BIG)
    assert bed.source.reads == [(image.id, 0), (image.id, 0)]
    assert bed.states(migration_id) == happy_path_with_notes("exporting", int(how == "crash"))


def test_a_stopped_daemon_releases_its_lease_at_once(engine_bed: EngineBed) -> None:
    """Stopped (SIGTERM), a daemon hands the migration back: another one takes it
    at once, with no lease to wait out and no take-over note."""
    bed = engine_bed
    bed.configure(progress_seconds=EVERY_CHUNK)  # progress recorded before the stop
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    first = bed.supervisor("daemon-1")
    bed.destination.at_byte("receive", 512 * KIB, first.stop)

    bed.run(first)

    left = bed.ledger.get(migration_id)
    assert (left.state, left.lease_owner, left.lease_expires_at) == ("uploading", None, None)
    assert 0 < left.bytes_done < len(BIG)  # progress was recorded on the way
    bed.run(bed.supervisor("daemon-2"))
    assert bed.states(migration_id) == HAPPY_PATH


@pytest.mark.parametrize("then", ["resumed", "cancelled"])
def test_a_record_created_just_before_a_kill_is_found_by_its_tag(
    engine_bed: EngineBed, then: str
) -> None:
    """Killed between creating the record and writing it down: only the record's
    migration-id tag leads to it. A resumed run reuses it; a cancel removes it."""
    bed = engine_bed
    image = bed.source.add_image(RAW)
    migration_id = bed.submit(image.id).id
    dead = bed.supervisor_to_kill()
    create, kill = bed.destination.create_record, bed.crash(dead)

    def create_then_die(spec: RecordSpec) -> DestinationImage:
        create(spec)
        kill()
        raise AssertionError("unreachable")

    bed.destination.create_record = create_then_die  # type: ignore[method-assign]
    bed.run(dead)
    del bed.destination.create_record
    left = bed.ledger.get(migration_id)
    assert (left.state, left.dest_image_id, bed.artifacts(migration_id)) == ("uploading", None, [])
    (stray,) = bed.destination.records
    if then == "cancelled":
        bed.ledger.request_cancel(migration_id)

    _finish_after(bed, migration_id, "crash")

    if then == "resumed":
        _assert_finished_once(bed, migration_id, RAW)
        assert bed.ledger.get(migration_id).dest_image_id == stray
    else:
        assert bed.ledger.get(migration_id).state == "cancelled"
        assert bed.destination.records == {}
