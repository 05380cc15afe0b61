"""Hostile data: Redis jobs, source images and names/properties, each a ``Case``."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.support import images
from tests.support.bad_jobs import BAD_JOBS
from tests.support.hostile.case import METACHAR_ID, METACHARACTERS, MIB, MISSING, UUID, Bed, Case
from tests.support.redis_peer import sidekiq_job


def job_cases() -> list[Case]:
    cases = [
        Case(f"job-{n:02d}", "job", re.escape(reason), payload=raw)
        for n, (raw, reason) in enumerate(BAD_JOBS, 1)
    ]
    long_text = "x" * 10_000
    cases += [
        Case("job-empty", "job", "not JSON: ", payload=b""),
        Case("job-null", "job", "not a JSON object but null$", payload=b"null"),
        Case("job-number", "job", "not a JSON object but a number$", payload=b"42"),
        Case("job-boolean", "job", "not a JSON object but a boolean$", payload=b"true"),
        Case("job-string", "job", "not a JSON object but a string$", payload=b'"img-1 site-b"'),
        Case(
            "job-10MB",
            "job",
            "unknown class 'r4-huge'$",
            payload=json.dumps({"class": "r4-huge", "junk": "j" * 10_000_000}).encode(),
        ),
        Case(
            "job-10KB-image",
            "job",
            re.escape("args[0] (source image uuid) is longer than 255 characters"),
            payload=sidekiq_job([long_text, "site-b"]),
        ),
        Case(
            "job-10KB-site",
            "job",
            re.escape("args[1] (destination site id) is longer than 255 characters"),
            payload=sidekiq_job(["img-1", long_text]),
        ),
        Case(
            "job-10KB-jid",
            "job",
            "jid is longer than 64 characters$",
            payload=sidekiq_job(["img-1", "site-b"], jid=long_text),
        ),
        Case(
            "job-nested-args",
            "job",
            re.escape('args[0] (source image uuid) must be a non-empty string, got ["img-1"]'),
            payload=sidekiq_job([["img-1"], "site-b"]),
        ),
        # Well-formed jobs whose image is not there: migrations that fail.
        Case(
            "job-missing-image",
            "job",
            f"site site-a: image {MISSING} does not exist$",
            make=lambda bed: MISSING,
        ),
        Case(
            "job-metachar-image-id",
            "job",
            re.escape(f"site site-a: image {METACHAR_ID} does not exist"),
            make=lambda bed: METACHAR_ID,
        ),
        Case(
            "job-path-image-id",
            "job",
            re.escape("site site-a: image ../../v2/images?limit=1 does not exist"),
            make=lambda bed: "../../v2/images?limit=1",
        ),
        Case(
            "job-non-ascii-image-id",
            "job",
            "site site-a: image образ-ü-✓ does not exist$",
            make=lambda bed: "образ-ü-✓",
        ),
    ]
    return cases


def _random_qcow2(bed: Bed) -> Path:
    path = bed.file("good.qcow2")
    if not path.exists():
        images.random_qcow2(path, 2)
    return path


def _random_raw(bed: Bed) -> Path:
    path = bed.file("good.raw")
    if not path.exists():
        images.random_raw(path, 2)
    return path


def _backing(bed: Bed) -> str:
    return bed.upload(
        images.qcow2_with_backing_file(bed.file("backing.qcow2")), "r4-backing", "qcow2"
    )


def _data_file(bed: Bed) -> str:
    path = images.qcow2_with_data_file(bed.file("datafile.qcow2"), bed.file("outside.raw"))
    return bed.upload(path, "r4-data-file", "qcow2")


def _extent(extent: str) -> Callable[[Bed], str]:
    def make(bed: Bed) -> str:
        name = f"extent-{abs(hash(extent))}.vmdk"
        return bed.upload(images.vmdk_descriptor(bed.file(name), extent), "r4-extent", "vmdk")

    return make


def _lying(source: Callable[[Bed], Path], declared: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(source(bed), f"r4-declared-{declared}", declared)


def _truncated_qcow2(bed: Bed) -> str:
    good = _random_qcow2(bed)
    cut = images.truncated(good, bed.file("cut.qcow2"), good.stat().st_size // 3)
    return bed.upload(cut, "r4-truncated", "qcow2")


def _zero_bytes(bed: Bed) -> str:
    empty = bed.file("empty.qcow2")
    empty.write_bytes(b"")
    return bed.upload(empty, "r4-zero-bytes", "qcow2")


def _iso(bed: Bed) -> str:
    return bed.upload(images.iso_image(bed.file("cd.iso")), "r4-iso", "iso")


def _queued(bed: Bed) -> str:
    image = bed.site_a.image.create_image(
        name="r4-queued", disk_format="raw", container_format="bare", allow_duplicates=True
    )
    bed.created.append(str(image.id))
    return str(image.id)


def _uploaded_raw(name: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(_random_raw(bed), name, "raw")


def _deactivate(bed: Bed, image_id: str) -> None:
    response = bed.site_a.image.post(f"/images/{image_id}/actions/deactivate")
    assert response.status_code == 204, response.text


def _kill(bed: Bed, image_id: str) -> None:
    """Glance marks an image `killed` when its upload failed; no API sets it, so
    the test writes it into the site's own database (the record is ours). Run
    alone: a write lock held while Glance writes makes Glance answer 500."""
    with sqlite3.connect(bed.glance_a_dir / "glance.sqlite", timeout=30) as db:
        db.execute("UPDATE images SET status = 'killed' WHERE id = ?", (image_id,))


def _store_damage(damage: Callable[[Path], None], name: str) -> Callable[[Bed], str]:
    """An image whose bytes in Glance's file store changed behind Glance's back."""

    def make(bed: Bed) -> str:
        image_id = bed.upload(_random_raw(bed), name, "raw")
        damage(bed.glance_a_dir / "images" / image_id)
        return image_id

    return make


def _cut(path: Path) -> None:
    os.truncate(path, MIB // 2)


def _flip(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))


def image_cases() -> list[Case]:
    return [
        Case("image-backing-file", "image", "qcow2 image has a backing file$", make=_backing),
        Case(
            "image-backing-file-converted",
            "image",
            "qcow2 image has a backing file$",
            make=_backing,
            dest="site-b-raw",
        ),
        Case("image-data-file", "image", "qcow2 image has an external data file$", make=_data_file),
        Case(
            "image-vmdk-host-extent",
            "image",
            "vmdk image is a bare descriptor: its data would be read from other files$",
            make=_extent("/etc/hostname"),
        ),
        Case(
            "image-vmdk-relative-extent",
            "image",
            "vmdk image is a bare descriptor: its data would be read from other files$",
            make=_extent("../../../etc/passwd"),
        ),
        Case(
            "image-qcow2-declared-raw",
            "image",
            "declared raw but the bytes are qcow2$",
            make=_lying(_random_qcow2, "raw"),
        ),
        Case(
            "image-raw-declared-qcow2",
            "image",
            "declared qcow2 but the bytes are raw$",
            make=_lying(_random_raw, "qcow2"),
        ),
        Case(
            "image-qcow2-declared-raw-converted",
            "image",
            "declared raw but the bytes are qcow2",
            make=_lying(_random_qcow2, "raw"),
            dest="site-b-raw",
        ),
        Case(
            "image-truncated-qcow2-converted",
            "image",
            re.escape("qcow2 image is damaged (qemu-img check): ERROR: ") + ".*end of the file",
            make=_truncated_qcow2,
            dest="site-b-raw",
        ),
        Case(
            "image-zero-bytes", "image", "declared qcow2 but the bytes are raw$", make=_zero_bytes
        ),
        Case(
            "image-queued", "image", f"source image {UUID} is queued, not available$", make=_queued
        ),
        Case(
            "image-deactivated",
            "image",
            f"source image {UUID} is deactivated, not available$",
            make=_uploaded_raw("r4-deactivated"),
            then=_deactivate,
        ),
        Case(
            "image-killed",
            "image",
            f"source image {UUID} is killed, not available$",
            make=_uploaded_raw("r4-killed"),
            then=_kill,
        ),
        Case(
            "image-iso-to-raw-site",
            "image",
            f"source image {UUID} is declared 'iso', not a disk image that can be converted "
            "to the raw site-b-raw requires$",
            make=_iso,
            dest="site-b-raw",
        ),
        Case(
            "image-cut-short-in-store",
            "image",
            # Glance promises the recorded size and stops short: the read times out
            # (or, by another timing, the connection breaks or the sizes differ).
            "gave up after 2 attempts: "
            f"(site site-a: download image {UUID}: |payload of migration {UUID}: )",
            make=_store_damage(_cut, "r4-cut-in-store"),
        ),
        Case(
            "image-bit-rot-in-store",
            "image",
            f"gave up after 2 attempts: payload of migration {UUID}: sha512 of the 2097152 "
            "bytes read does not match the recorded one$",
            make=_store_damage(_flip, "r4-bit-rot"),
        ),
    ]


# Names and properties that must arrive unchanged (no shell ever sees them).
HOSTILE_NAMES = {
    "name-shell-metacharacters": METACHARACTERS,
    "name-newlines-and-tabs": "line one\nline two\r\n\tand a tab",
    "name-non-ascii": "Ubuntu 24.04 — образ ✓ 日本語 \u202eevil",
}
HOSTILE_PROPERTIES = {
    "os_r4_shell": METACHARACTERS,
    "os_r4_unicode": "ünïcødé — ✓",
    "os_r4_long": "L" * 10_000,
}


def _named(name: str, **properties: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(_random_raw(bed), name, "raw", **properties)


def name_cases() -> list[Case]:
    cases = [
        Case(case_id, "name", "done", make=_named(name)) for case_id, name in HOSTILE_NAMES.items()
    ]
    cases.append(
        Case(
            "name-hostile-properties",
            "name",
            "done",
            make=_named("r4-properties", **HOSTILE_PROPERTIES),
        )
    )
    cases.append(
        Case(
            "name-shell-metacharacters-over-ssh",
            "name",
            "done",
            make=_named(METACHARACTERS, os_r4_shell=METACHARACTERS),
            dest="site-b-ssh",
        )
    )
    # AWS keeps a name in tags and the AMI's description; its DEBUG logs are
    # botocore's signed requests, the place an access key would leak.
    cases.append(
        Case(
            "name-shell-metacharacters-to-aws",
            "name",
            "done",
            make=_named(METACHARACTERS),
            dest="aws-a",
        )
    )
    return cases
