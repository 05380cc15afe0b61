"""converting: produce the disk format the destination requires (a no-op otherwise).

Either way this state fixes the payload's sha512 (what the destination must end up
holding, checked again at registering) unless the destination reads the file and
reports that sha512 itself.
"""

from __future__ import annotations

from migratio import qemu, safety
from migratio.checksums import sha512_of_file
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
    staged = step.staged_source
    converted = step.payload_file
    if not converted.exists():
        safety.check_file(staged, image.disk_format)
        step.reserve_space()
        step.add_artifact("file", str(converted))
        step.checkpoint()
        qemu.convert(staged, image.disk_format, converted, step.target_format)
    # A destination that takes a file reads every byte of it and reports the sha512
    # it read; hashing the (sparse, often mostly empty) file here too doubles the cost.
    payload_sha512 = None if step.destination.wants_file else sha512_of_file(converted)
    step.record(payload_sha512=payload_sha512, bytes_total=converted.stat().st_size)
    return Advance(
        Trigger.CONVERTED,
        f"converted {image.disk_format} to {step.target_format}: {converted.stat().st_size} bytes",
    )
