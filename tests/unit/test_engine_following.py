"""A qcow2 sent while it downloads (``migratio.following``), through the stub site
reading it as ebs-direct does: a crash midway, and a download that turns out corrupt."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.engine import (
    HAPPY_PATH,
    KIB,
    MIB,
    Crash,
    EngineBed,
    happy_path_with_notes,
    payload,
    qcow2_of,
    sha512,
)

DISK = payload(2 * MIB, seed=5)


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return qcow2_of(DISK, tmp_path_factory.mktemp("qcow2"))


def _reads_in_place(bed: EngineBed) -> None:
    bed.destination.required_disk_format = "raw"
    bed.destination.wants_file = True
    bed.destination.reads_disk_map = True


def test_a_crash_while_blocks_leave_during_the_download_starts_the_record_again(
    engine_bed: EngineBed, qcow2: bytes
) -> None:
    """Blocks had left from a download never verified: the next daemon does not
    trust them, drops that record and sends the whole disk into a new one."""
    bed = engine_bed
    _reads_in_place(bed)
    image = bed.source.add_image(qcow2, disk_format="qcow2")
    migration_id = bed.submit(image.id).id
    dead = bed.supervisor_to_kill()
    kill = bed.crash(dead)
    released = threading.Event()
    first_daemon_over = threading.Event()

    def crash_once_blocks_left() -> None:  # in the upload, 512 KiB of the disk received
        released.set()
        kill()

    def hold_the_download() -> None:  # in the download's thread: never to finish
        if first_daemon_over.is_set():
            return  # the dead daemon's download stopped at its kill, before this byte
        assert released.wait(30), "no block left while the image was downloading"
        raise Crash("the download dies with the daemon")

    bed.destination.at_byte("receive", 512 * KIB, crash_once_blocks_left)
    # Two thirds of the file: the head probe at exporting reads less than this.
    bed.source.at_byte("read", len(qcow2) * 2 // 3, hold_the_download)

    bed.run(dead)
    first_daemon_over.set()

    left = bed.ledger.get(migration_id)
    assert (left.state, left.lease_owner) == ("uploading", "daemon-dead")
    [first_record] = bed.destination.records
    assert bed.leftovers(migration_id) == ["source.qcow2.part"]
    bed.expire_lease(migration_id)
    bed.run(bed.supervisor("daemon-2"))

    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    record = bed.destination.record(done.dest_image_id)
    assert done.dest_image_id != first_record
    assert bytes(record.data) == DISK
    assert record.sha512 == sha512(DISK) == done.dest_sha512
    assert bed.artifacts(migration_id)[0] == ("dest_image", first_record, "removed")
    assert first_record not in bed.destination.records
    assert bed.states(migration_id) == happy_path_with_notes("uploading", 1)
    # Probe, the download cut short, the download that was verified.
    assert bed.source.reads == [(image.id, 0)] * 3
    assert bed.leftovers(migration_id) == []


def test_a_download_that_does_not_match_its_sha512_completes_no_record(
    engine_bed: EngineBed, qcow2: bytes
) -> None:
    bed = engine_bed
    _reads_in_place(bed)
    image = bed.source.add_image(qcow2, disk_format="qcow2")
    middle = len(qcow2) // 2  # inside a data cluster: the tables still read well
    corrupted = qcow2[:middle] + bytes([qcow2[middle] ^ 0xFF]) + qcow2[middle + 1 :]

    def corrupt_in_flight() -> None:  # after describe recorded the true sha512
        image.data = corrupted

    bed.source.on_call("read", corrupt_in_flight)
    migration_id = bed.submit(image.id).id

    bed.run()

    failed = bed.ledger.get(migration_id)
    assert failed.state == "failed"
    assert failed.last_error and "sha512" in failed.last_error
    assert bed.destination.records == {}
    # Retried as any download that does not match (a transient fault), then given up.
    retried = [("uploading", "uploading")] * 2
    assert bed.states(migration_id) == [*HAPPY_PATH[:4], *retried, ("uploading", "failed")]
    assert bed.leftovers(migration_id) == []


def test_a_qcow2_of_another_layout_is_staged_whole_first(
    engine_bed: EngineBed, tmp_path: Path
) -> None:
    """Told by its header (here: zstd compression, an incompatible feature),
    before any record exists."""
    bed = engine_bed
    _reads_in_place(bed)
    raw, image_file = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    raw.write_bytes(DISK[: 256 * KIB] + bytes(256 * KIB))
    convert = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd"]
    subprocess.run([*convert, str(raw), str(image_file)], check=True)
    image = bed.source.add_image(image_file.read_bytes(), disk_format="qcow2")
    migration_id = bed.submit(image.id).id

    bed.run()

    done = bed.ledger.get(migration_id)
    assert done.state == "done", done.last_error
    assert bytes(bed.destination.record(done.dest_image_id).data) == raw.read_bytes()
    assert bed.notes(migration_id) == [
        (
            "exporting",
            "staged before upload, not sent as it downloads: qcow2 with incompatible features",
        )
    ]
    assert "staged as source.qcow2" in bed.messages(migration_id)[3]
