"""The engine's happy paths on stub sites: streamed, staged and converted, dedup.

Each test runs a real supervisor over a SQLite ledger and checks what an operator
would: the bytes at the destination, the copy's metadata, the audit trail, and
that nothing is left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_CS,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    Provenance,
)
from migratio.drivers.stub import StubImage
from tests.support.engine import (
    DESTINATION,
    HAPPY_PATH,
    KIB,
    SOURCE,
    EngineBed,
    payload,
    qcow2_of,
    sha512,
)

RAW = payload(300 * KIB)
PROPERTIES = {"hw_disk_bus": "virtio", "os_distro": "debian", "owner_note": "kept too"}


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real qcow2 of 256 KiB of data: qemu-img must convert it back to exactly that."""
    return qcow2_of(payload(256 * KIB, seed=1), tmp_path_factory.mktemp("qcow2"))


def _image(bed: EngineBed, data: bytes = RAW, **fields: object) -> StubImage:
    return bed.source.add_image(
        data,
        name="debian-12",
        min_disk=2,
        min_ram=512,
        architecture="x86_64",
        properties=dict(PROPERTIES),
        **fields,
    )


def _assert_copied(bed: EngineBed, migration_id: str, image: StubImage, sent: bytes) -> str:
    """The migration is done with one record holding ``sent``, registered with the
    source's metadata and provenance; returns the record id."""
    migration = bed.ledger.get(migration_id)
    assert migration.state == "done", migration.last_error
    assert (migration.lease_owner, migration.last_error, migration.attempt) == (None, None, 0)
    assert bed.records_of(migration_id) == [migration.dest_image_id]
    record = bed.destination.record(migration.dest_image_id)
    assert bytes(record.data) == sent
    assert record.sha512 == sha512(sent) == migration.dest_sha512
    assert migration.source_sha512 == image.sha512
    assert (record.name, record.min_disk, record.min_ram, record.architecture) == (
        "debian-12",
        2,
        512,
        "x86_64",
    )
    assert record.properties == {
        **PROPERTIES,
        SOURCE_UUID: image.id,
        SOURCE_CS: SOURCE,
        SOURCE_T: SOURCE,
        SOURCE_SHA512: image.sha512,
        MIGRATION_ID: migration_id,
    }
    assert bed.leftovers(migration_id) == []
    assert not (bed.work_dir / migration_id).exists()
    assert bed.source.open_streams == 0
    return record.id


@pytest.mark.parametrize("returns_sha512", [True, False], ids=["site-hashes", "engine-hashes"])
def test_a_raw_image_is_streamed_through_every_state(
    engine_bed: EngineBed, returns_sha512: bool
) -> None:
    bed = engine_bed
    bed.destination.returns_sha512 = returns_sha512
    image = _image(bed)
    migration = bed.submit(image.id)

    bed.run()

    record_id = _assert_copied(bed, migration.id, image, RAW)
    assert bed.states(migration.id) == HAPPY_PATH
    messages = bed.messages(migration.id)
    assert f"{len(RAW)} bytes, declared raw, detected raw, to be streamed" in messages[2]
    assert f"no conversion needed: {DESTINATION} takes raw" == messages[3]
    assert f"sent {len(RAW)} bytes to {record_id}" in messages[4]
    assert "sha512 verified" in messages[5]
    # Probed once at exporting, streamed once at uploading: never staged.
    assert bed.source.reads == [(image.id, 0), (image.id, 0)]
    assert bed.artifacts(migration.id) == [("dest_image", record_id, "kept")]
    assert bed.ledger.get(migration.id).bytes_done == len(RAW)
    assert bed.sites.opened == [("source", SOURCE), ("destination", DESTINATION)]
    assert (bed.source.closed, bed.destination.closed) == (1, 1)


@pytest.mark.parametrize(
    ("source_format", "required", "wants_file"),
    [("qcow2", "raw", False), ("qcow2", "raw", True), ("raw", None, True)],
    ids=["converted-streamed", "converted-file", "staged-file"],
)
def test_a_staged_payload_is_checked_converted_and_sent(
    engine_bed: EngineBed,
    qcow2: bytes,
    source_format: str,
    required: str | None,
    wants_file: bool,
) -> None:
    bed = engine_bed
    bed.destination.required_disk_format = required
    bed.destination.wants_file = wants_file
    data = qcow2 if source_format == "qcow2" else RAW
    expected = payload(256 * KIB, seed=1) if required == "raw" else RAW
    image = _image(bed, data, disk_format=source_format)
    migration = bed.submit(image.id)

    bed.run()

    record_id = _assert_copied(bed, migration.id, image, expected)
    record = bed.destination.records[record_id]
    assert record.disk_format == (required or source_format)
    assert bed.states(migration.id) == HAPPY_PATH
    messages = bed.messages(migration.id)
    assert f"detected {source_format}, staged as source.{source_format}" in messages[2]
    files = [("file", f"source.{source_format}.part", "removed")]
    files.append(("file", f"source.{source_format}", "removed"))
    if required:
        assert f"converted qcow2 to raw: {len(expected)} bytes" == messages[3]
        files.append(("file", "converted.raw", "removed"))
    assert bed.artifacts(migration.id) == [*files, ("dest_image", record_id, "kept")]
    # Read once, into the work dir; the upload reads the staged file.
    assert bed.source.reads == [(image.id, 0)]


@pytest.mark.parametrize("compressed", [False, True], ids=["followed", "compressed-converted"])
def test_a_destination_reading_the_disk_map_gets_no_converted_copy(
    engine_bed: EngineBed, tmp_path: Path, compressed: bool
) -> None:
    """A raw payload read from the qcow2 through its tables while it downloads (as
    ebs-direct does): no converted file is written, and the destination holds the
    raw disk. A compressed qcow2 cannot be read in place: found out from its L2
    table, what was sent is dropped and the staged file converted as before."""
    bed = engine_bed
    bed.destination.required_disk_format = "raw"
    bed.destination.wants_file = True
    bed.destination.reads_disk_map = True
    # Repeated pieces, so that qemu-img -c compresses clusters (random ones it keeps).
    expected = payload(KIB, seed=1) * 256 + bytes(768 * KIB) + payload(KIB, seed=2) * 128
    image = _image(bed, qcow2_of(expected, tmp_path, compressed=compressed), disk_format="qcow2")
    migration = bed.submit(image.id)

    bed.run()

    record_id = _assert_copied(bed, migration.id, image, expected)
    done = bed.ledger.get(migration.id)
    assert done.bytes_total == len(expected)
    messages = bed.messages(migration.id)
    assert messages[2].endswith("detected qcow2, to be sent as it downloads")
    assert messages[3] == (
        f"qcow2 to be read in place as a {len(expected)}-byte raw disk "
        "while it downloads: no copy written"
    )
    files = [("file", "source.qcow2.part", "removed"), ("file", "source.qcow2", "removed")]
    # The map's files are named before it is tried, so a crash leaves nothing behind.
    files += [("file", ".disk.map.part", "removed"), ("file", "disk.map", "removed")]
    kept = ("dest_image", record_id, "kept")
    if compressed:
        assert messages[4] == (
            "not sent as it downloaded (compressed clusters): sending it from the staged file"
        )
        retried = [*HAPPY_PATH[:4], ("uploading", "uploading"), *HAPPY_PATH[4:]]
        assert bed.states(migration.id) == retried
        dropped = bed.artifacts(migration.id)[0]
        assert dropped[0] == "dest_image" and dropped[1] not in bed.destination.records
        files = [
            ("dest_image", dropped[1], "removed"),
            *files,
            ("file", "converted.raw", "removed"),
        ]
        assert bed.artifacts(migration.id) == [*files, kept]
    else:
        assert bed.states(migration.id) == HAPPY_PATH
        assert bed.artifacts(migration.id) == [kept, *files]
    # The head probed at exporting, then the one download the upload followed.
    assert bed.source.reads == [(image.id, 0), (image.id, 0)]


def test_a_copy_already_at_the_destination_ends_the_migration_at_once(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    image = _image(bed)
    copy = bed.destination.add_copy(Provenance(image.id, SOURCE, image.sha512), RAW)
    migration = bed.submit(image.id)

    bed.run()

    done = bed.ledger.get(migration.id)
    assert done.state == "done"
    assert (done.dest_image_id, done.dest_sha512) == (copy.id, sha512(RAW))
    assert bed.states(migration.id) == [
        (None, "queued"),
        ("queued", "exporting"),
        ("exporting", "done"),
    ]
    assert f"already holds this image as {copy.id}" in bed.messages(migration.id)[-1]
    assert list(bed.destination.records) == [copy.id]
    assert bed.source.reads == []  # not a byte read
    assert "create_record" not in bed.destination.calls
    assert bed.artifacts(migration.id) == []


@pytest.mark.parametrize("differs", ["source_uuid", "source_site", "source_sha512", "format"])
def test_a_copy_of_something_else_is_not_taken_for_this_image(
    engine_bed: EngineBed, differs: str
) -> None:
    bed = engine_bed
    image = _image(bed)
    provenance = {"source_uuid": image.id, "source_site": SOURCE, "source_sha512": image.sha512}
    if differs != "format":
        provenance[differs] = "something-else"
    other = bed.destination.add_copy(
        Provenance(**provenance), RAW, disk_format="qcow2" if differs == "format" else "raw"
    )
    migration = bed.submit(image.id)

    bed.run()

    _assert_copied(bed, migration.id, image, RAW)
    assert bed.states(migration.id) == HAPPY_PATH
    assert other.id in bed.destination.records


def test_a_source_without_sha512_is_copied_without_looking_for_a_copy(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    image = _image(bed, reports_sha512=False)
    migration = bed.submit(image.id)

    bed.run()

    done = bed.ledger.get(migration.id)
    assert done.state == "done", done.last_error
    assert bytes(bed.destination.record(done.dest_image_id).data) == RAW
    assert "find_copy" not in bed.destination.calls


def test_a_site_that_makes_an_image_of_the_record_keeps_both(engine_bed: EngineBed) -> None:
    """As an AMI is made from a snapshot: the result is a new record, the first
    one is part of it, and cleanup must remove neither."""
    bed = engine_bed
    bed.destination.registers_image = True
    image = _image(bed)
    migration = bed.submit(image.id)

    bed.run()

    done = bed.ledger.get(migration.id)
    assert done.state == "done", done.last_error
    ami = bed.destination.record(done.dest_image_id)
    (snapshot_id,) = ami.parts
    assert set(bed.destination.records) == {ami.id, snapshot_id}
    assert bytes(bed.destination.records[snapshot_id].data) == RAW
    assert ami.properties[SOURCE_UUID] == image.id
    assert bed.artifacts(migration.id) == [
        ("dest_image", snapshot_id, "kept"),
        ("dest_image", ami.id, "kept"),
    ]


def test_concurrent_migrations_each_get_their_own_record(engine_bed: EngineBed) -> None:
    bed = engine_bed
    images = [_image(bed, payload(100 * KIB, seed=seed)) for seed in range(4)]
    migrations = [bed.submit(image.id) for image in images]

    bed.run()

    for migration, image in zip(migrations, images, strict=True):
        _assert_copied(bed, migration.id, image, image.data)
    assert len(bed.destination.records) == len(images)
