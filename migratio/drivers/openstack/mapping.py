"""Glance's records and words in the engine's: one module for the Image API driver
and the SSH driver (whose ``openstack`` CLI shows the same Glance images).

Glance JSON becomes ``SourceImage``/``DestinationImage`` here, and a
``Registration`` becomes a JSON patch; what Glance owns (its schema fields, its
hashes, its reserved namespace) is told apart from custom properties here, so
no Glance status word or field name reaches the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from migratio.drivers.base import (
    DestinationImage,
    ImageStatus,
    RecordStatus,
    Registration,
    SourceImage,
)

IMAGE_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

# Fields of Glance's image schema; everything else on an image is a custom property.
IMAGE_FIELDS = frozenset(
    {
        "id", "name", "status", "visibility", "protected", "checksum", "owner",
        "size", "virtual_size", "min_ram", "min_disk", "disk_format",
        "container_format", "created_at", "updated_at", "tags", "self", "file",
        "schema", "locations", "direct_url", "stores", "os_hidden",
        "os_hash_algo", "os_hash_value",
    }
)  # fmt: skip
# Not copied: Glance computes the hash itself (a patch of it is refused, 403) and
# os_hidden is a per-image listing flag, not a property of the template.
GLANCE_OWNED = frozenset({"os_hash_algo", "os_hash_value", "os_hidden"})
# Glance's reserved namespace (import bookkeeping); setting any of it is refused.
GLANCE_RESERVED_PREFIX = "os_glance_"
# The property families a copy carries (docs/image-fidelity.md): hardware and
# guest-OS hints Nova reads, and img_* (config drive, signature: the registering
# state drops the signature when the bytes were converted).
COPIED_PREFIXES = ("hw_", "os_", "img_")

# Statuses an image passes through on its way to `active`: worth waiting for.
# (`queued` has no data yet and nobody may be sending any: not worth waiting for.)
_BECOMING_ACTIVE = frozenset({"saving", "importing", "uploading"})
# Best first: the record an earlier run got furthest with.
_PROGRESS_RANK = {"active": 0, "saving": 1, "uploading": 1, "importing": 1, "queued": 2}


def image_status(word: str) -> ImageStatus:
    """A source image's Glance status as the engine sees it."""
    if word == "active":
        return ImageStatus.AVAILABLE
    if word in _BECOMING_ACTIVE:
        return ImageStatus.PENDING
    return ImageStatus.UNAVAILABLE


def record_status(word: str) -> RecordStatus:
    """A destination record's Glance status: Glance takes data only into a
    `queued` image and cannot resume an interrupted upload."""
    if word == "active":
        return RecordStatus.COMPLETE
    if word == "queued":
        return RecordStatus.OPEN
    return RecordStatus.BROKEN


def progress_rank(image: Mapping[str, Any]) -> int:
    """How far a record got, smallest first: active, then on its way, then empty."""
    return _PROGRESS_RANK.get(str(image.get("status")), 9)


def source_image(image: Mapping[str, Any]) -> SourceImage:
    """An image as the Image API answers it; KeyError, TypeError or ValueError when
    the answer is not one."""
    return SourceImage(
        id=str(image["id"]),
        name=str(image.get("name") or ""),
        status=image_status(str(image.get("status") or "")),
        site_status=str(image.get("status") or ""),
        disk_format=str(image.get("disk_format") or ""),
        container_format=str(image.get("container_format") or ""),
        size=int(image.get("size") or 0),
        virtual_size=optional_int(image.get("virtual_size")),
        md5=image.get("checksum") or None,
        sha512=sha512_from_os_hash(image),
        min_disk=int(image.get("min_disk") or 0),
        min_ram=int(image.get("min_ram") or 0),
        architecture=image.get("architecture") or None,
        properties=copied_properties(image),
        tags=tuple(sorted({str(tag) for tag in image.get("tags") or ()})),
        protected=image.get("protected") is True,
        # Nova sets it on an instance snapshot: the image the instance booted from.
        base_image_ref=str(image.get("base_image_ref") or "") or None,
    )


def destination_image(image: Mapping[str, Any]) -> DestinationImage:
    """An image as the Image API answers it (custom properties at the top level)."""
    return DestinationImage(
        id=str(image["id"]),
        status=record_status(str(image.get("status") or "")),
        sha512=sha512_from_os_hash(image),
        size=optional_int(image.get("size")),
        properties=custom_properties(image),
    )


def custom_properties(image: Mapping[str, Any]) -> dict[str, str]:
    """The image's custom string properties (Glance stores them all as strings)."""
    return {
        key: value
        for key, value in image.items()
        if key not in IMAGE_FIELDS
        and not key.startswith(GLANCE_RESERVED_PREFIX)
        and isinstance(value, str)
    }


def copied_properties(image: Mapping[str, Any]) -> dict[str, str]:
    """The ``hw_*``/``os_*`` properties a copy carries; Glance-owned ones excluded."""
    return {
        key: value
        for key, value in custom_properties(image).items()
        if key.startswith(COPIED_PREFIXES) and key not in GLANCE_OWNED
    }


def sha512_from_os_hash(fields: Mapping[str, Any]) -> str | None:
    """The sha512 Glance computed of the image data, from the ``os_hash_*`` fields
    (top-level in the Image API, among ``properties`` in the CLI's view); None when
    Glance hashed with another algorithm, or not yet."""
    if fields.get("os_hash_algo") == "sha512" and fields.get("os_hash_value"):
        return str(fields["os_hash_value"])
    return None


def optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def patch(
    image: Mapping[str, Any],
    registration: Registration,
    *,
    visibility: str = "private",
    protected: bool = False,
) -> list[dict[str, Any]]:
    """JSON-patch operations for what differs; ``add`` replaces an existing property.

    ``visibility`` and ``protected`` are what the destination's policy gives the
    copy; tags are the source's list, compared as a set (Glance keeps no order).
    """
    wanted: dict[str, Any] = {
        "name": registration.name,
        "min_disk": registration.min_disk,
        "min_ram": registration.min_ram,
        "visibility": visibility,
        "protected": protected,
        **registration.properties,
    }
    if set(image.get("tags") or ()) != set(registration.tags):
        wanted["tags"] = sorted(set(registration.tags))
    if registration.architecture is not None:
        wanted["architecture"] = registration.architecture
    operations = [
        {"op": "add", "path": f"/{_pointer(key)}", "value": value}
        for key, value in wanted.items()
        if image.get(key) != value
    ]
    if registration.architecture is None and "architecture" in image:
        operations.append({"op": "remove", "path": "/architecture"})
    return operations


def _pointer(key: str) -> str:
    """A JSON pointer segment (RFC 6901): property names may contain ``/`` or ``~``."""
    return key.replace("~", "~0").replace("/", "~1")
