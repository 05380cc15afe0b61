"""uploading: send the payload into a destination record created for this migration.

The record is created first and tagged with the migration id, so a resumed run
finds it rather than creating a second one. What the destination needs to resume
(ids, blocks or bytes already sent) it keeps in the ledger through the transfer.
A qcow2 the destination reads through a disk map is downloaded here, its blocks
leaving while it arrives (``migratio.following``).
"""

from __future__ import annotations

from contextlib import ExitStack, closing

from migratio import faults
from migratio.drivers.base import BASE_RECORD, DestinationImage, RecordSpec, RecordStatus
from migratio.errors import IntegrityError
from migratio.following import NotFollowable, following_download, keep_download
from migratio.machine import Trigger
from migratio.states import converting
from migratio.step import Advance, Step
from migratio.transfer import StepTransfer
from migratio.versions import base_for_new_record, base_of_record


def run(step: Step) -> Advance:
    if step.follows_download:
        step.reserve_space()  # before any record: a wait for room leaves none behind
        try:
            return _upload(step, following=True)
        except NotFollowable as exc:
            # Downloaded and verified by now: drop what was sent, read it as staged.
            step.note(f"not sent as it downloaded ({exc}): sending it from the staged file")
            if step.migration.dest_image_id:
                step.remove_record(step.migration.dest_image_id)
            keep_download(step)
            converting.run(step)
    return _upload(step, following=False)


def _upload(step: Step, *, following: bool) -> Advance:
    record = _reusable_record(step, following)
    if record is not None and record.is_complete:
        return Advance(
            Trigger.UPLOADED,
            f"{record.id} on {step.migration.dest_site} already holds the payload",
            {"dest_sha512": record.sha512},
        )
    if record is None:
        record = _create_record(step)
    base = base_of_record(step, record)
    with ExitStack() as stack:
        # Watching first: a download stalled while the step ends is aborted too.
        stack.enter_context(step.watchdog.watching())
        followed = stack.enter_context(following_download(step)) if following else None
        transfer = stack.enter_context(closing(StepTransfer(step, base, followed)))
        verified = step.destination.receive(record.id, transfer)
    # What left the engine, checked in flight (or known since converting, or by the
    # group's read): a site that reports holding other bytes (a storage fault)
    # must not pass as done.
    expected = transfer.sent_sha512 or step.migration.payload_sha512
    if verified is not None and expected is not None and verified != expected:
        raise IntegrityError(
            f"destination record {record.id} sha512 differs from the bytes sent "
            f"({verified[:16]}... instead of {expected[:16]}...)"
        )
    sent = transfer.meter.bytes or (step.migration.bytes_total or 0)
    step.record(dest_sha512=verified or expected, bytes_done=sent)
    return Advance(
        Trigger.UPLOADED,
        f"sent {transfer.meter.bytes or 'the'} bytes to {record.id} on {step.migration.dest_site}",
    )


def _reusable_record(step: Step, following: bool) -> DestinationImage | None:
    """The record an earlier run created: kept if empty or already complete, else
    dropped; always dropped unless complete when following a download anew (what
    it holds came from a download never verified)."""
    migration = step.migration
    destination = step.destination
    record = destination.find_record(migration.id)
    if record is None and migration.dest_image_id:
        record = destination.get_record(migration.dest_image_id)
    if record is None:
        return None
    step.add_artifact("dest_image", record.id, migration.dest_site)
    if migration.dest_image_id != record.id:
        step.record(dest_image_id=record.id)
    expected = migration.payload_sha512
    complete = record.is_complete and (expected is None or record.sha512 == expected)
    if complete or (record.status is RecordStatus.OPEN and not following):
        return record
    step.remove_record(record.id)
    return None


def _create_record(step: Step) -> DestinationImage:
    image = step.source_image
    base = base_for_new_record(step)
    record = step.destination.create_record(
        RecordSpec(
            step.migration.id,
            image.name,
            step.target_format,
            image.container_format,
            step.migration.bytes_total,
            architecture=image.architecture,
            properties=image.properties,
            base=base,
        )
    )
    # The record exists at the site but not yet in the ledger: a resumed run must
    # find it by its migration tag.
    faults.point("destination.record_created")
    step.add_artifact("dest_image", record.id, step.migration.dest_site)
    step.record(dest_image_id=record.id)
    if base is not None:
        if record.properties.get(BASE_RECORD) == base.record_id:
            step.note(
                f"incremental: {record.id} starts from version {base.image_id} "
                f"({base.record_id}, migration {base.migration_id}); only changed blocks are sent"
            )
        else:
            step.note(
                f"base version {base.image_id}: {record.id} could not start from "
                f"{base.record_id}; sending all of it"
            )
    return record
