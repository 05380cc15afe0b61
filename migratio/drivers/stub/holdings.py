"""What a stub site holds: source images and destination records, plain data a
test reads and writes directly (statuses are the engine's own enums)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from migratio.drivers.base import (
    MIGRATION_ID,
    DestinationImage,
    ImageStatus,
    RecordStatus,
    SourceImage,
)


@dataclass
class StubImage:
    """A source image: its bytes and what ``describe`` says about them.

    ``reports_sha512`` False: a site that publishes no sha512 (no dedup is possible).
    """

    id: str
    name: str
    data: bytes
    disk_format: str = "raw"
    container_format: str = "bare"
    status: ImageStatus = ImageStatus.AVAILABLE
    min_disk: int = 0
    min_ram: int = 0
    architecture: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    reports_sha512: bool = True
    tags: tuple[str, ...] = ()
    protected: bool = False
    base_image_ref: str | None = None

    @property
    def sha512(self) -> str:
        return _digest("sha512", self.data)

    def describe(self) -> SourceImage:
        return SourceImage(
            id=self.id,
            name=self.name,
            status=self.status,
            disk_format=self.disk_format,
            container_format=self.container_format,
            size=len(self.data),
            virtual_size=None,
            md5=_digest("md5", self.data),
            sha512=self.sha512 if self.reports_sha512 else None,
            min_disk=self.min_disk,
            min_ram=self.min_ram,
            architecture=self.architecture,
            properties=dict(self.properties),
            site_status=self.status.value,
            tags=self.tags,
            protected=self.protected,
            base_image_ref=self.base_image_ref,
        )


@dataclass
class StubRecord:
    """A destination record: created empty, filled by ``receive``, given its
    metadata by ``register``. ``properties`` hold the migration-id tag.

    ``parts``: the records an image is made of (an AMI's snapshot), when the site
    ``registers_image``.
    """

    id: str
    name: str
    disk_format: str
    container_format: str
    status: RecordStatus = RecordStatus.OPEN
    data: bytearray = field(default_factory=bytearray)
    properties: dict[str, str] = field(default_factory=dict)
    min_disk: int = 0
    min_ram: int = 0
    architecture: str | None = None
    parts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    protected: bool = False

    @property
    def migration_id(self) -> str | None:
        return self.properties.get(MIGRATION_ID)

    @property
    def sha512(self) -> str | None:
        """Known once the record holds its whole payload, as a site reports it."""
        if self.status is not RecordStatus.COMPLETE:
            return None
        return hashlib.sha512(self.data).hexdigest()

    def view(self) -> DestinationImage:
        return DestinationImage(
            id=self.id,
            status=self.status,
            sha512=self.sha512,
            size=len(self.data),
            properties=dict(self.properties),
            parts=self.parts,
        )


@functools.lru_cache(maxsize=64)
def _digest(algorithm: str, data: bytes) -> str:
    """An image's digest, computed once: the engine describes an image several times
    per migration (bytes cache their hash, so a repeated look-up costs nothing)."""
    return hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()
