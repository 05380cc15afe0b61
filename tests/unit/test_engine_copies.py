"""Copies of the result (as an AMI's in other regions), through the stub driver:
recorded as artifacts as they are made, kept with the image when done and named
in the done text; removed with everything else when cancelled while being made."""

from __future__ import annotations

from migratio.feedback.messages import status_text
from migratio.ledger.store import Change
from tests.support.engine import KIB, EngineBed, payload

RAW = payload(128 * KIB, seed=7)
REGIONS = ("eu-central-1", "us-east-1")


def test_done_only_with_every_copy_each_kept_and_named(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.destination.registers_image = True
    bed.destination.copy_regions = REGIONS
    migration = bed.submit(bed.source.add_image(RAW).id)

    bed.run()

    done = bed.ledger.get(migration.id)
    assert done.state == "done", done.last_error
    image = bed.destination.record(done.dest_image_id)
    (snapshot_id,) = image.parts
    copies = done.dest_copies
    assert copies is not None and len(copies) == 2
    assert set(bed.destination.records) == {image.id, snapshot_id, *copies}
    for copy_id in copies:
        assert bytes(bed.destination.records[copy_id].data) == RAW
    assert bed.artifacts(migration.id) == [
        ("dest_image", snapshot_id, "kept"),
        ("dest_image", image.id, "kept"),
        ("dest_copy", copies[0], "kept"),
        ("dest_copy", copies[1], "kept"),
    ]
    assert bed.messages(migration.id)[-1].endswith(f"; copied as {copies[0]}, {copies[1]}")
    text = status_text(Change(done, "registering", bed.messages(migration.id)[-1]))
    assert text == (
        f"Migration done: image {image.id} at {done.dest_site}; copies {copies[0]}, {copies[1]}"
    )


def test_a_cancel_while_copying_removes_the_copies_the_image_and_its_snapshot(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.destination.registers_image = True
    bed.destination.copy_regions = REGIONS
    migration = bed.submit(bed.source.add_image(RAW).id)
    # Asked while the copies are being made: seen at the first wait for one.
    bed.destination.on_call("distribute", lambda: bed.ledger.request_cancel(migration.id))

    bed.run()

    cancelled = bed.ledger.get(migration.id)
    assert cancelled.state == "cancelled" and cancelled.dest_copies is None
    assert bed.states(migration.id)[-1] == ("registering", "cancelled")
    assert bed.destination.records == {}
    kinds = [(kind, status) for kind, _, status in bed.artifacts(migration.id)]
    assert kinds == [
        ("dest_image", "removed"),
        ("dest_image", "removed"),
        ("dest_copy", "removed"),
    ]  # the second copy was never made: the cancel stopped it after the first


def test_without_copies_the_done_text_is_unchanged(engine_bed: EngineBed) -> None:
    bed = engine_bed
    migration = bed.submit(bed.source.add_image(RAW).id)
    bed.run()
    done = bed.ledger.get(migration.id)
    assert done.state == "done" and done.dest_copies is None
    assert bed.destination.count("distribute") == 1
    assert status_text(Change(done, "registering", "")) == (
        f"Migration done: image {done.dest_image_id} at {done.dest_site}"
    )
