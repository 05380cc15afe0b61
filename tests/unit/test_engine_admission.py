"""Admission to the work dir: a migration whose files do not fit waits, with one
audit note and no lease or worker held, and starts once they fit.

The work dir is real; its file system is pretended small: ``SmallDisk`` reports
a capacity and, as free, that capacity less what the files under the work dir
take on disk, so files written and removed by the migrations (and by the test)
move the free space as on a real disk.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from migratio import qemu
from migratio.admission import (
    METADATA_MARGIN,
    WAITING_NOTE,
    DiskSpace,
    WaitingForSpace,
    WorkDirSpace,
    allocated,
    planned_files,
)
from migratio.drivers.base import ImageStatus, SourceImage
from migratio.supervisor import Supervisor
from tests.support import reliability
from tests.support.engine import (
    KIB,
    RUN_LIMIT,
    EngineBed,
    happy_path_with_notes,
    payload,
    qcow2_of,
)

NOTE = re.compile(
    rf"{WAITING_NOTE}: needs (?P<needed>\d+) bytes, (?P<free>\d+) free in .*, "
    r"(?P<reserved>\d+) of them reserved by running migrations"
)


class SmallDisk:
    """A file system of ``capacity`` bytes holding only the work dir."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def __call__(self, work_dir: Path) -> DiskSpace:
        used = sum(allocated(path) for path in work_dir.rglob("*") if path.is_file())
        return DiskSpace(self.capacity, self.capacity - used)


def _supervisor(bed: EngineBed, capacity: int, owner: str = "daemon-1") -> Supervisor:
    bed.configure(space_wait_seconds=0.02)
    supervisor = bed.supervisor(owner)
    supervisor.space = WorkDirSpace(bed.work_dir, SmallDisk(capacity))
    return supervisor


def _occupy(bed: EngineBed, size: int) -> Path:
    """A file of ``size`` bytes in the work dir, as another tool might leave."""
    bed.work_dir.mkdir(parents=True, exist_ok=True)
    filler = bed.work_dir / "operator-left-this"
    filler.write_bytes(b"\x01" * size)
    return filler


def _waiting_notes(bed: EngineBed, migration_id: str) -> list[tuple[str, str]]:
    return [(s, m) for s, m in bed.notes(migration_id) if m.startswith(WAITING_NOTE)]


def test_a_migration_that_does_not_fit_waits_with_one_note_and_starts_when_space_frees(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.destination.wants_file = True  # staged in the work dir
    data = payload(300 * KIB)
    image = bed.source.add_image(data)
    migration_id = bed.submit(image.id).id
    filler = _occupy(bed, 800 * KIB)

    # Looked at again and again (every 20 ms) while it does not fit.
    bed.run(_supervisor(bed, 1024 * KIB), until=lambda: bed.source.count("describe") >= 5)

    waiting = bed.ledger.get(migration_id)
    assert (waiting.state, waiting.lease_owner, waiting.attempt) == ("exporting", None, 0)
    assert waiting.last_error is None  # waiting is not failing
    [(state, note)] = _waiting_notes(bed, migration_id)
    found = NOTE.fullmatch(note)
    assert state == "exporting" and found, note
    assert int(found["needed"]) == len(data) and int(found["free"]) < len(data)
    assert bed.source.reads == []  # not a byte staged
    assert bed.leftovers(migration_id) == []

    filler.unlink()
    bed.run(_supervisor(bed, 1024 * KIB))

    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    [record] = bed.records_of(migration_id)
    assert bytes(bed.destination.records[record].data) == data
    assert len(_waiting_notes(bed, migration_id)) == 1
    assert bed.states(migration_id) == happy_path_with_notes("exporting", 1)
    assert bed.leftovers(migration_id) == []
    reliability.record(
        "R8", "admission (stub): waits until space frees", outcome=done.state, leftovers=0, notes=1
    )


def test_an_image_read_in_place_asks_room_for_itself_only(
    engine_bed: EngineBed, tmp_path: Path
) -> None:
    """A destination that reads the staged qcow2 through its disk map writes no
    converted copy: the image fits a work dir that could not hold it twice."""
    bed = engine_bed
    bed.destination.required_disk_format = "raw"
    bed.destination.wants_file = True
    bed.destination.reads_disk_map = True
    data = payload(300 * KIB)
    qcow2 = qcow2_of(data, tmp_path)
    image = bed.source.add_image(qcow2, disk_format="qcow2")
    migration_id = bed.submit(image.id).id

    bed.run(_supervisor(bed, len(qcow2) + 64 * KIB))

    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    [record] = bed.records_of(migration_id)
    assert bytes(bed.destination.records[record].data)[: len(data)] == data
    assert _waiting_notes(bed, migration_id) == []
    assert bed.leftovers(migration_id) == []


def test_migrations_that_fit_still_run_while_one_waits(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.configure(concurrency=1)  # one worker: the waiting migration must not hold it
    bed.destination.wants_file = True
    big = bed.source.add_image(payload(600 * KIB), name="big")
    big_id = bed.submit(big.id).id
    small = [bed.source.add_image(payload(100 * KIB, seed=n), name=f"small-{n}") for n in range(3)]
    small_ids = [bed.submit(image.id).id for image in small]
    _occupy(bed, 600 * KIB)  # 424 KiB free: room for a small one, not for the big

    def small_done() -> bool:
        return all(bed.ledger.get(i).state == "done" for i in small_ids)

    bed.run(_supervisor(bed, 1024 * KIB), until=small_done)

    assert small_done()
    assert bed.ledger.get(big_id).state == "exporting"
    assert len(_waiting_notes(bed, big_id)) == 1
    assert all(_waiting_notes(bed, i) == [] for i in small_ids)
    assert bed.leftovers(big_id) == []


def test_space_still_to_be_written_by_running_migrations_is_counted(
    engine_bed: EngineBed,
) -> None:
    """The second migration would fit in what is free while the first is staging,
    but not in what will be left once the first has written its file: it waits."""
    bed = engine_bed
    bed.destination.wants_file = True
    first = bed.source.add_image(payload(400 * KIB, seed=1), name="first")
    second = bed.source.add_image(payload(400 * KIB, seed=2), name="second")
    release = bed.source.stall_at("read", 128 * KIB, limit=RUN_LIMIT)
    first_id = bed.submit(first.id).id
    submitted: list[str] = []

    def finished() -> bool:
        # The second is submitted once the first is staging (held at 128 KiB) ...
        if bed.source.reads and not submitted:
            submitted.append(bed.submit(second.id).id)
        # ... and the first goes on once the second has been told to wait.
        if submitted and _waiting_notes(bed, submitted[0]):
            release.set()
        return bool(submitted) and all(
            bed.ledger.get(i).state == "done" for i in (first_id, *submitted)
        )

    bed.run(_supervisor(bed, 700 * KIB), until=finished)
    [second_id] = submitted

    [(_, note)] = _waiting_notes(bed, second_id)
    found = NOTE.fullmatch(note)
    assert found, note
    needed, free, reserved = (int(found[k]) for k in ("needed", "free", "reserved"))
    assert free >= needed, "it would have fitted in the free space alone"
    assert 0 < reserved <= 400 * KIB and free - reserved < needed
    assert _waiting_notes(bed, first_id) == []
    for migration_id, image in ((first_id, first), (second_id, second)):
        [record] = bed.records_of(migration_id)
        assert bytes(bed.destination.records[record].data) == image.data
        assert bed.leftovers(migration_id) == []
    reliability.record(
        "R8",
        "admission (stub): space reserved by a running migration counted",
        outcome="done",
        leftovers=0,
        notes=1,
    )


def test_files_larger_than_the_whole_work_dir_fail_at_once_with_the_reason(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.destination.wants_file = True
    image = bed.source.add_image(payload(600 * KIB))
    migration_id = bed.submit(image.id).id

    bed.run(_supervisor(bed, 512 * KIB))

    failed = bed.ledger.get(migration_id)
    assert failed.state == "failed"
    assert "is too small for this image" in (failed.last_error or "")
    assert f"need {600 * KIB} bytes, the file system holds {512 * KIB}" in (failed.last_error or "")
    assert bed.source.reads == [] and bed.leftovers(migration_id) == []


def test_a_conversion_plans_for_the_data_not_the_virtual_size(tmp_path: Path) -> None:
    """A 4 GiB disk holding 300 KiB: the sparse raw takes the data, with a margin
    for qcow2's tables; before the staged file is measured, the image's size."""
    image = SourceImage(
        "i", "n", ImageStatus.AVAILABLE, "qcow2", "bare", 300 * KIB, 4 << 30, None, None
    )
    staged, raw = tmp_path / "source.qcow2", tmp_path / "converted.raw"
    margin = METADATA_MARGIN
    assert planned_files(image, staged, raw) == {staged: 300 * KIB, raw: 300 * KIB + 300 + margin}
    measured = planned_files(image, staged, raw, data=2048 * KIB)
    assert measured == {staged: 300 * KIB, raw: 2048 * KIB + 2 * KIB + margin}
    assert planned_files(image, staged, None) == {staged: 300 * KIB}


def test_the_data_of_a_sparse_image_is_measured_by_qemu_img_map(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as disk:
        disk.truncate(64 * KIB * KIB)  # 64 MiB virtual
        for offset in (0, 32 * KIB * KIB):
            disk.seek(offset)
            disk.write(b"\x01" * 256 * KIB)
    qcow2 = tmp_path / "sparse.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(sparse), str(qcow2)], check=True
    )
    assert qemu.data_size(sparse, "raw") == 512 * KIB
    assert qemu.data_size(qcow2, "qcow2") == 512 * KIB


def test_asked_again_for_more_space_the_reservation_is_checked_again(tmp_path: Path) -> None:
    """A compressed image's data, measured once staged, exceeds its size: a new question."""
    space = WorkDirSpace(tmp_path, lambda _: DiskSpace(10 * KIB * KIB, 4 * KIB * KIB))
    planned = tmp_path / "converted.raw"
    space.reserve("m", {planned: 3 * KIB * KIB})
    space.reserve("m", {planned: 2 * KIB * KIB})  # less than held: admitted already
    with pytest.raises(WaitingForSpace):
        space.reserve("m", {planned: 5 * KIB * KIB})


def test_the_members_of_a_group_count_their_shared_files_once(tmp_path: Path) -> None:
    """Fan-out: siblings plan the same staged file; it is not reserved twice."""
    space = WorkDirSpace(tmp_path, lambda _: DiskSpace(10 * KIB * KIB, 4 * KIB * KIB))
    shared = tmp_path / "groups" / "g" / "source.qcow2"
    own = tmp_path / "groups" / "g" / "converted.raw"
    space.reserve("member-1", {shared: 3 * KIB * KIB})
    space.reserve("member-2", {shared: 3 * KIB * KIB})  # the same file: fits
    space.reserve("member-3", {shared: 3 * KIB * KIB, own: 1 * KIB * KIB})
    assert space.reserved() == 4 * KIB * KIB
    with pytest.raises(WaitingForSpace):
        space.reserve("alone", {tmp_path / "other" / "source.raw": 1 * KIB * KIB})
