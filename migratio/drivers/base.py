"""The one small interface between the migration states and the clouds.

A *source* can describe an image and stream its bytes; a *destination* can find
an earlier copy, hold a record for a migration, receive bytes and register the
result. The states call only this; adding a kind of site means a new driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

# Properties a destination copy carries so the platform (and dedup) can link it
# back to its source. `source_cs` is the legacy tool's name for the source site.
SOURCE_UUID = "source_uuid"
SOURCE_CS = "source_cs"
SOURCE_T = "source_t"
SOURCE_SHA512 = "migratio_source_sha512"
MIGRATION_ID = "migratio_migration_id"


@dataclass(frozen=True)
class SourceImage:
    """What a source site says about an image, as recorded at export time."""

    id: str
    name: str
    status: str
    disk_format: str
    container_format: str
    size: int
    virtual_size: int | None
    md5: str | None
    sha512: str | None
    min_disk: int = 0
    min_ram: int = 0
    architecture: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Where a destination copy came from: the dedup key."""

    source_uuid: str
    source_site: str
    source_sha512: str


@dataclass(frozen=True)
class RecordSpec:
    """What a destination record is created with, before any byte is sent."""

    migration_id: str
    name: str
    disk_format: str
    container_format: str


@dataclass(frozen=True)
class Registration:
    """The metadata a finished copy carries."""

    name: str
    disk_format: str
    container_format: str
    min_disk: int
    min_ram: int
    architecture: str | None
    properties: Mapping[str, str]


@dataclass(frozen=True)
class DestinationImage:
    """A destination image record as the destination reports it now."""

    id: str
    status: str
    sha512: str | None
    size: int | None
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        return self.status == "active"


class SourceSite(Protocol):
    """A site images are read from."""

    def describe(self, image_id: str) -> SourceImage:
        """The image's metadata; ImageNotFound if it does not exist."""
        ...

    def read(self, image_id: str) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the image bytes in chunks of bounded size."""
        ...


class DestinationSite(Protocol):
    """A site images are written to."""

    @property
    def required_disk_format(self) -> str | None:
        """The disk format this site needs, or None to keep the source's."""
        ...

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        """An active image already migrated from that source, if any (dedup)."""
        ...

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """The record an earlier run of this migration created, if any."""
        ...

    def get_record(self, record_id: str) -> DestinationImage | None:
        """A record by id, or None when it no longer exists."""
        ...

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """Create an empty record tagged with the migration id."""
        ...

    def receive(self, record_id: str, chunks: Iterable[bytes]) -> None:
        """Store the bytes into the record; raises if the site refuses them."""
        ...

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Set the finished copy's metadata and return its current state."""
        ...

    def remove(self, record_id: str) -> None:
        """Delete a record; a record that is already gone is not an error."""
        ...


class Site(SourceSite, DestinationSite, Protocol):
    """A driver for one configured site; OpenStack sites are both source and destination."""

    def close(self) -> None:
        """Release connections."""
        ...
