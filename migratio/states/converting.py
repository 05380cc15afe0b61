"""converting: produce the disk format the destination requires (a no-op otherwise).

A destination that reads a raw disk block by block from a file (``reads_disk_map``)
gets no conversion when the staged image can be read in place: this state only
maps where its data lies (``disk_map``), so no raw copy is written and the first
block can leave as soon as the map is saved. An image that cannot be read that
way (compressed, encrypted) is converted as for any other destination.

Either way this state fixes the payload's sha512 (what the destination must end up
holding, checked again at registering) unless the destination reads the file and
reports that sha512 itself.
"""

from __future__ import annotations

from migratio import disk_map, qemu, safety
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
    converted = step.converted_file
    checked = False
    if step.destination.reads_disk_map and not converted.exists():
        mapped = step.disk_map
        if mapped is None:
            safety.check_file(staged, image.disk_format)
            checked = True
            mapped = _map(step)
        if mapped is not None:
            # The destination reads the file and reports what it read (a manifest).
            step.record(payload_sha512=None, bytes_total=mapped.size)
            return Advance(
                Trigger.CONVERTED,
                f"mapped {image.disk_format} for reading in place as a {mapped.size}-byte "
                f"{step.target_format} disk holding {mapped.data_bytes} bytes of data: "
                "no copy written",
            )
    if not converted.exists():
        if not checked:
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


def _map(step: Step) -> disk_map.DiskMap | None:
    saved = step.disk_map_file
    step.add_artifact("file", str(saved.with_name(f".{saved.name}.part")))
    step.add_artifact("file", str(saved))
    step.checkpoint()
    return disk_map.plan(step.staged_source, step.source_image.disk_format, saved)
