"""exporting: learn what the source image is, skip it if the destination has it, and
check its bytes are safe before anything else touches them.

Without conversion the bytes are only probed here (the upload streams them later,
guarded again); with conversion they are staged in the work dir, sha512-verified,
once the work dir has room for the files this migration will write (admission).
A qcow2 whose raw disk the destination reads through a disk map is only probed
too: the uploading state downloads it while its blocks leave (``following``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from migratio import qcow2_follow, qemu, safety
from migratio.checksums import verified
from migratio.drivers.base import ImageStatus, Provenance, SourceImage
from migratio.errors import PermanentError, TransientError
from migratio.group_files import SHARED, making
from migratio.group_read import append_source, part_of
from migratio.machine import Trigger
from migratio.step import Advance, Step
from migratio.workspace import filling


def run(step: Step) -> Advance:
    image = _describe(step)
    step.record(
        source_image=asdict(image) | {"properties": dict(image.properties)},
        bytes_total=image.size,
        source_md5=image.md5,
        source_sha512=image.sha512,
    )
    if step.needs_conversion and image.disk_format.lower() not in qemu.CONVERTIBLE:
        raise PermanentError(
            f"source image {image.id} is declared {image.disk_format!r}, not a disk image "
            f"that can be converted to the {step.target_format} {step.migration.dest_site} requires"
        )
    if copy := _existing_copy(step, image):
        return copy
    if step.follows_group_read:
        # The spool this member follows is the group's: reserved like a staged file.
        step.add_artifact(SHARED, str(step.migration.group_id))
        step.reserve_space()
        return Advance(
            Trigger.EXPORTED,
            f"source image {image.name!r}: {image.size} bytes, declared {image.disk_format}, "
            "to be streamed from the group's one read of the source as it arrives",
        )
    if step.follows_download and (followed := _followable(step, image)):
        return followed
    if step.stages_payload:
        step.reserve_space()
        staged = stage(step, image)
        detected = safety.check_file(staged, image.disk_format)
        where = f"staged as {staged.name}"
    else:
        with step.watchdog.watching(), step.source.read(image.id) as chunks:
            detected = safety.probe_stream(chunks, image.disk_format)
        where = "to be streamed"
    return Advance(
        Trigger.EXPORTED,
        f"source image {image.name!r}: {image.size} bytes, declared {image.disk_format}, "
        f"detected {detected}, {where}",
    )


def _followable(step: Step, image: SourceImage) -> Advance | None:
    """Probe the head of a qcow2 the destination can read while it downloads
    (``migratio.following``): safe and of a layout followed, it is not staged
    here but downloaded by the uploading state, its blocks leaving as they land."""
    head = bytearray()

    def kept(chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            head.extend(chunk[: max(0, qcow2_follow.HEAD_BYTES - len(head))])
            yield chunk

    with step.watchdog.watching(), step.source.read(image.id) as chunks:
        detected = safety.probe_stream(kept(chunks), image.disk_format)
    try:
        found = qcow2_follow.layout(bytes(head))
    except qcow2_follow.NotFollowable as exc:
        step.note(f"staged before upload, not sent as it downloads: {exc}")
        return None
    # The raw disk the destination receives, as the disk map would have it.
    step.record(bytes_total=found.size)
    return Advance(
        Trigger.EXPORTED,
        f"source image {image.name!r}: {image.size} bytes, declared {image.disk_format}, "
        f"detected {detected}, to be sent as it downloads",
    )


def _describe(step: Step) -> SourceImage:
    image = step.source.describe(step.migration.image_id)
    status = image.site_status or image.status
    if image.status is ImageStatus.PENDING:
        raise TransientError(f"source image {image.id} is {status}, not yet available")
    if image.status is not ImageStatus.AVAILABLE:
        raise PermanentError(f"source image {image.id} is {status}, not available")
    return image


def _existing_copy(step: Step, image: SourceImage) -> Advance | None:
    if not image.sha512:
        return None
    provenance = Provenance(image.id, step.migration.source_site, image.sha512)
    copy = step.destination.find_copy(provenance, step.target_format)
    if copy is None:
        return None
    return Advance(
        Trigger.FOUND_COPY,
        f"{step.migration.dest_site} already holds this image as {copy.id} "
        "(same source, site and sha512): nothing copied",
        {"dest_image_id": copy.id, "dest_sha512": copy.sha512},
    )


def stage(step: Step, image: SourceImage) -> Path:
    """Download the source into the work dir; the final name appears only once verified.

    In a fan-out group the file is the group's: the first member to get here reads
    the source, the others wait for it and read it from the work dir (members that
    take the image as it is follow it as it is written: ``group_read``)."""
    final = step.staged_source
    group_id = step.migration.group_id
    if group_id is None:
        return _download(step, image, final)
    step.add_artifact(SHARED, group_id)
    with (
        making(final, step.checkpoint),
        step.watchdog.watching(),
        filling(part_of(final), image.size),
    ):
        # Appended from where a writer that died left it; followers read it meanwhile.
        append_source(
            final,
            image.size,
            image.sha512,
            lambda offset: step.source.read(image.id, offset),
            lambda chunks: step.tracked(step.paced(chunks, step.migration.source_site)),
            f"source image {image.id}",
        )
    return final


def _download(step: Step, image: SourceImage, final: Path) -> Path:
    if final.exists():
        return final
    partial = part_of(final)
    step.add_artifact("file", str(partial))
    step.add_artifact("file", str(final))
    with (
        step.watchdog.watching(),
        filling(partial, image.size),
        step.source.read(image.id) as chunks,
        partial.open("wb") as out,
    ):
        paced = step.paced(chunks, step.migration.source_site)
        for chunk in step.tracked(verified(paced, image.sha512, f"source image {image.id}")):
            out.write(chunk)
    partial.rename(final)
    return final
