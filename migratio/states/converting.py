"""converting: produce the disk format the destination requires (a no-op otherwise).

A destination that reads a raw disk block by block from a file (``reads_disk_map``)
gets no conversion when the staged image can be read in place: this state only
maps where its data lies (``disk_map``), so no raw copy is written and the first
block can leave as soon as the map is saved. An image that cannot be read that
way (compressed, encrypted) is converted as for any other destination. A plain
qcow2 that such a destination reads while it downloads is not even staged yet:
it is mapped as it arrives, in uploading (``migratio.following``).

Either way this state fixes the payload's sha512 (what the destination must end up
holding, checked again at registering) unless the destination reads the file and
reports that sha512 itself.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from migratio import disk_map, qemu, safety
from migratio.checksums import sha512_of_file
from migratio.group_files import making
from migratio.machine import Trigger
from migratio.step import Advance, Step


def run(step: Step) -> Advance:
    image = step.source_image
    if not step.needs_conversion:
        step.record(payload_sha512=image.sha512)
        return Advance(
            Trigger.CONVERTED,
            f"no conversion needed: {step.migration.dest_site} takes {image.disk_format}",
        )
    if step.follows_download:
        # Mapped as it downloads, while uploading (``migratio.following``).
        step.record(payload_sha512=None)
        return Advance(
            Trigger.CONVERTED,
            f"{image.disk_format} to be read in place as a {step.migration.bytes_total}-byte "
            f"{step.target_format} disk while it downloads: no copy written",
        )
    converted = step.converted_file
    if step.destination.reads_disk_map and not converted.exists():
        with _shared(step, step.disk_map_file):
            mapped = step.disk_map or _map(step)
        if mapped is not None:
            # The destination reads the file and reports what it read (a manifest).
            step.record(payload_sha512=None, bytes_total=mapped.size)
            return Advance(
                Trigger.CONVERTED,
                f"mapped {image.disk_format} for reading in place as a {mapped.size}-byte "
                f"{step.target_format} disk holding {mapped.data_bytes} bytes of data: "
                "no copy written",
            )
    # One conversion per target format for a whole group: made by the first member
    # to get here, found by the others (with its sha512 beside it).
    with _shared(step, converted):
        payload_sha512 = _convert(step, converted)
    step.record(payload_sha512=payload_sha512, bytes_total=converted.stat().st_size)
    return Advance(
        Trigger.CONVERTED,
        f"converted {image.disk_format} to {step.target_format}: {converted.stat().st_size} bytes",
    )


def _shared(step: Step, path: Path) -> AbstractContextManager[None]:
    """The lock on making a group's file; nothing for a migration of its own."""
    if step.migration.group_id is None:
        return nullcontext()
    return making(path, step.checkpoint)


def _map(step: Step) -> disk_map.DiskMap | None:
    saved = step.disk_map_file
    safety.check_file(step.staged_source, step.source_image.disk_format)
    if step.migration.group_id is None:  # a group's files go with the group's directory
        step.add_artifact("file", str(saved.with_name(f".{saved.name}.part")))
        step.add_artifact("file", str(saved))
    step.checkpoint()
    return disk_map.plan(step.staged_source, step.source_image.disk_format, saved)


def _convert(step: Step, converted: Path) -> str | None:
    """Make ``converted`` unless it exists; return its sha512 when the destination
    will not report it."""
    image = step.source_image
    if not converted.exists():
        safety.check_file(step.staged_source, image.disk_format)
        step.reserve_space()
        if step.migration.group_id is None:  # a group's files go with the group's directory
            step.add_artifact("file", str(converted))
        step.checkpoint()
        qemu.convert(step.staged_source, image.disk_format, converted, step.target_format)
    # A destination that takes a file reads every byte of it and reports the sha512
    # it read; hashing the (sparse, often mostly empty) file here too doubles the cost.
    if step.destination.wants_file:
        return None
    beside = converted.with_name(f"{converted.name}.sha512")
    if step.migration.group_id is not None and beside.exists():
        return beside.read_text().strip()
    payload_sha512 = sha512_of_file(converted)
    if step.migration.group_id is not None:
        partial = beside.with_name(f".{beside.name}.part")
        partial.write_text(payload_sha512)
        partial.rename(beside)
    return payload_sha512
