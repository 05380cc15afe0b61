"""Glance's words in the engine's: shared by the Image API driver and the SSH driver
(whose ``openstack`` CLI reports the same Glance statuses)."""

from __future__ import annotations

from migratio.drivers.base import ImageStatus, RecordStatus

# Statuses an image passes through on its way to `active`: worth waiting for.
# (`queued` has no data yet and nobody may be sending any: not worth waiting for.)
_BECOMING_ACTIVE = frozenset({"saving", "importing", "uploading"})


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
