"""converting: produce the disk format the destination requires (a no-op otherwise).

Either way this state fixes the payload's sha512 (what the destination must end up
holding, checked again at registering) unless the destination reads the file and
reports that sha512 itself.
"""

from __future__ import annotations

from pathlib import Path

from migratio import qemu, safety
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
    converted = step.payload_file
    if step.migration.group_id is None:
        payload_sha512 = _convert(step, converted)
    else:
        # One conversion per target format for the whole group: made by the first
        # member to get here, found by the others (with its sha512 beside it).
        with making(converted, step.checkpoint):
            payload_sha512 = _convert(step, converted)
    step.record(payload_sha512=payload_sha512, bytes_total=converted.stat().st_size)
    return Advance(
        Trigger.CONVERTED,
        f"converted {image.disk_format} to {step.target_format}: {converted.stat().st_size} bytes",
    )


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
