"""uploading: send the payload into a destination record created for this migration.

The record is created first and tagged with the migration id, so a resumed run
finds it rather than creating a second one. Bytes pass through the safety guard,
which holds back the last chunk until the whole image has been checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from migratio import safety
from migratio.checksums import Sha512Meter, file_chunks
from migratio.drivers.base import DestinationImage, RecordSpec
from migratio.machine import Trigger
from migratio.prefetch import prefetched
from migratio.step import Advance, Step


def run(step: Step) -> Advance:
    record = _reusable_record(step)
    if record is not None and record.is_active:
        return Advance(
            Trigger.UPLOADED,
            f"image {record.id} on {step.migration.dest_site} already holds the payload",
            {"dest_sha512": record.sha512},
        )
    if record is None:
        record = _create_record(step)
    meter = Sha512Meter()
    step.destination.receive(record.id, _payload(step, meter))
    step.record(dest_sha512=meter.hexdigest, bytes_done=meter.bytes)
    return Advance(
        Trigger.UPLOADED,
        f"sent {meter.bytes} bytes to image {record.id} on {step.migration.dest_site}",
    )


def _reusable_record(step: Step) -> DestinationImage | None:
    """The record an earlier run created: kept if empty or already complete, else dropped."""
    destination = step.destination
    record = destination.find_record(step.migration.id)
    if record is None:
        return None
    step.add_artifact("dest_image", record.id, step.migration.dest_site)
    if step.migration.dest_image_id != record.id:
        step.record(dest_image_id=record.id)
    complete = record.is_active and record.sha512 == step.migration.payload_sha512
    if complete or record.status == "queued":
        return record
    destination.remove(record.id)
    return None


def _create_record(step: Step) -> DestinationImage:
    image = step.source_image
    record = step.destination.create_record(
        RecordSpec(step.migration.id, image.name, step.target_format, image.container_format)
    )
    step.add_artifact("dest_image", record.id, step.migration.dest_site)
    step.record(dest_image_id=record.id)
    return record


def _payload(step: Step, meter: Sha512Meter) -> Iterator[bytes]:
    """The bytes to send, read ahead in a thread, hashed once (by ``meter``) and
    verified against the payload's recorded sha512 before the guard lets the last
    chunk go."""
    expected = step.migration.payload_sha512
    if step.needs_conversion:
        path = step.path(f"converted.{step.target_format}")
        checked = meter.verifying(file_chunks(path), expected, f"converted file {path.name}")
        yield from safety.guard_stream(step.tracked(prefetched(checked)), step.target_format)
        return
    image = step.source_image
    with step.source.read(image.id) as chunks:
        checked = meter.verifying(chunks, expected, f"source image {image.id}")
        yield from safety.guard_stream(step.tracked(prefetched(checked)), image.disk_format)
