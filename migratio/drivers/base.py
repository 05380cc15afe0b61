"""The one small interface between the migration states and the clouds.

Capabilities: a *source* can describe an image and stream its bytes; a
*destination* can find an earlier copy, hold a record for a migration, receive
bytes and register the result; a *versioned destination* can also start a
record from an earlier version's and take only what changed. A driver implements
the ones its kind of site supports (an AWS region is only a destination). The
states call only this, and speak only its words (``ImageStatus``,
``RecordStatus``): each driver maps its cloud's status words onto them. Adding
a kind of site means a new driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from migratio.disk_map import DataRuns

# Properties a destination copy carries so the platform (and dedup) can link it
# back to its source. `source_cs` is the legacy tool's name for the source site.
SOURCE_UUID = "source_uuid"
SOURCE_CS = "source_cs"
SOURCE_T = "source_t"
SOURCE_SHA512 = "migratio_source_sha512"
MIGRATION_ID = "migratio_migration_id"
# On a record started from an earlier version's record: that record's id.
BASE_RECORD = "migratio_base_record"


class ImageStatus(StrEnum):
    """Whether a source image can be read, in the engine's words."""

    AVAILABLE = "available"  # its bytes can be read
    PENDING = "pending"  # on its way to available (being uploaded or imported): wait
    UNAVAILABLE = "unavailable"  # no data, failed, deactivated or being deleted


class RecordStatus(StrEnum):
    """A destination record's state, in the engine's words."""

    OPEN = "open"  # can take (the rest of) the payload, or is being finished by the site
    COMPLETE = "complete"  # holds the whole payload
    BROKEN = "broken"  # cannot be continued (an interrupted, unresumable write): remove it


@dataclass(frozen=True)
class SourceImage:
    """What a source site says about an image, as recorded at export time.

    ``site_status`` is the site's own word for the status, for messages only.
    """

    id: str
    name: str
    status: ImageStatus
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
    site_status: str = ""
    # Glance's tags (a set of strings, kept sorted) and its protected flag.
    tags: tuple[str, ...] = ()
    protected: bool = False
    # The image this one was made from (an instance snapshot's ``base_image_ref``):
    # its previous version, which an incremental upload may start from.
    base_image_ref: str | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a destination copy came from: the dedup key."""

    source_uuid: str
    source_site: str
    source_sha512: str | None

    def as_properties(self) -> dict[str, str]:
        """The properties (or tags) a copy with this provenance is found by."""
        properties = {SOURCE_UUID: self.source_uuid, SOURCE_T: self.source_site}
        if self.source_sha512:
            properties[SOURCE_SHA512] = self.source_sha512
        return properties

    def labels(self) -> dict[str, str]:
        """Everything a copy is labelled with: the above and the legacy tool's
        ``source_cs``, which the platform still reads."""
        return {**self.as_properties(), SOURCE_CS: self.source_site}


@dataclass(frozen=True)
class BaseVersion:
    """An earlier version of the image, already migrated to this destination, that
    a new version's record may start from (then only what changed is sent).

    image_id: the earlier version's source image id.
    migration_id: the migration that moved it.
    record_id: its record at the destination (an EBS snapshot).
    result_id: the image it became there (an AMI), for people.
    manifest: what the record holds, as the destination described it when it was
        written (``Transfer.keep_manifest``); opaque to the engine.
    """

    image_id: str
    migration_id: str
    record_id: str
    result_id: str | None
    manifest: bytes


@dataclass(frozen=True)
class RecordSpec:
    """What a destination record is created with, before any byte is sent.

    ``base``: an earlier version to start from; a destination that cannot use it
    starts empty, and its record then carries no ``BASE_RECORD`` property.
    """

    migration_id: str
    name: str
    disk_format: str
    container_format: str
    size: int | None = None
    # What the copy will say about its hardware, so a destination can refuse an
    # image it cannot hold before any byte is sent.
    architecture: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    base: BaseVersion | None = None


@dataclass(frozen=True)
class Registration:
    """The metadata a finished copy carries; ``protected`` is the source's flag,
    which the destination's policy may override."""

    name: str
    disk_format: str
    container_format: str
    min_disk: int
    min_ram: int
    architecture: str | None
    properties: Mapping[str, str]
    tags: tuple[str, ...] = ()
    protected: bool = False


@dataclass(frozen=True)
class DestinationImage:
    """A destination image record as the destination reports it now."""

    id: str
    status: RecordStatus
    sha512: str | None
    size: int | None
    properties: Mapping[str, str] = field(default_factory=dict)
    # Other destination records the image is made of and that must stay with it
    # (an AMI's snapshot); they are kept, not cleaned up, when the migration ends.
    parts: tuple[str, ...] = ()

    @property
    def is_complete(self) -> bool:
        return self.status is RecordStatus.COMPLETE


class Transfer(Protocol):
    """What a destination receives: the payload and a journal to resume by.

    ``chunks`` are checked (safety guard, sha512 against ``sha512`` when read from
    offset 0) and report progress. A destination that needs random access (it sets
    ``wants_file``) reads ``path`` instead and reports progress itself.
    """

    @property
    def disk_format(self) -> str: ...

    @property
    def sha512(self) -> str | None:
        """The sha512 the complete payload must have, when known."""
        ...

    @property
    def size(self) -> int | None: ...

    @property
    def path(self) -> Path | None:
        """A local file holding the payload; set when the destination wants one."""
        ...

    @property
    def disk_map(self) -> DataRuns | None:
        """Set when ``path`` is not the payload but an image holding it: the
        payload is then the raw disk this map describes (zeros but at its data
        runs, read from ``path``). Only for a destination that ``reads_disk_map``."""
        ...

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        """The payload from ``offset`` on, in chunks of bounded size."""
        ...

    def progress(self, bytes_done: int) -> None:
        """Record progress; also the point where shutdown or cancel stops a transfer."""
        ...

    def pace(self, amount: int) -> None:
        """Wait until ``amount`` more bytes may be sent within the bandwidth caps;
        a destination reading ``path`` calls it before sending each piece
        (``chunks`` are paced already)."""
        ...

    def load_state(self) -> dict[str, Any]:
        """What ``save_state`` last stored for this migration (empty at first)."""
        ...

    def save_state(self, state: dict[str, Any]) -> None:
        """Persist resume data (ids, blocks sent) in the ledger, fenced by the lease."""
        ...

    def add_artifact(self, kind: str, ref: str) -> None:
        """Record a temporary thing the destination created, for cleanup."""
        ...

    @property
    def base(self) -> BaseVersion | None:
        """The earlier version the record was started from (its ``BASE_RECORD``), if any."""
        ...

    def keep_manifest(self, record_id: str, manifest: bytes) -> None:
        """Keep what the finished record holds in the ledger, so that a later
        version can start from it (``BaseVersion.manifest``)."""
        ...


class Tracker(Protocol):
    """What a destination is given while it finishes a registered image (sharing
    it, copying it to other regions): where to record what it creates, and a
    point to stop at during long waits."""

    def add_artifact(self, kind: str, ref: str) -> None:
        """Record a record the destination created (removed if the migration ends
        otherwise than done, kept with the image when it is done)."""
        ...

    def checkpoint(self) -> None:
        """Stop here if asked to: shutdown, a lost lease, an operator's cancel."""
        ...


class SourceSite(Protocol):
    """A site images are read from."""

    def describe(self, image_id: str) -> SourceImage:
        """The image's metadata; ImageNotFound if it does not exist."""
        ...

    def read(self, image_id: str, offset: int = 0) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the image bytes from ``offset`` on, in chunks of bounded size."""
        ...


class DestinationSite(Protocol):
    """A site images are written to."""

    @property
    def required_disk_format(self) -> str | None:
        """The disk format this site needs, or None to keep the source's."""
        ...

    @property
    def wants_file(self) -> bool:
        """True when receiving needs the payload as a local file (random access)."""
        ...

    @property
    def reads_disk_map(self) -> bool:
        """True when a raw payload can be read from the staged image through its
        ``disk_map`` (no raw copy written); only for a destination that wants a file."""
        ...

    @property
    def reads_while_downloading(self) -> bool:
        """True when that disk map may be handed on run by run while the image is
        still downloading (``migratio.following``); only with ``reads_disk_map``."""
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

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        """Store the payload into the record; raises if the site refuses it.

        Returns the sha512 the destination verified itself, or None.
        """
        ...

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Set the finished copy's metadata and return it; idempotent, so a
        re-entered registering finds what an interrupted one created."""
        ...

    def distribute(self, image_id: str, tracker: Tracker) -> tuple[DestinationImage, ...]:
        """After registration: share the image and copy it as the site's settings
        say; return the copies (ids the site's ``remove`` takes, each with the
        records it is made of) once every one is complete. Idempotent: a re-entered
        registering finds the copies already made. Each copy is announced to
        ``tracker`` as soon as it exists, so that a cancel removes it."""
        ...

    def remove(self, record_id: str) -> None:
        """Delete a record; a record that is already gone is not an error."""
        ...


@runtime_checkable
class VersionedDestination(Protocol):
    """A destination whose records can start from an earlier version's record
    (``RecordSpec.base``), so that only what changed is sent."""

    @property
    def takes_base_version(self) -> bool:
        """Whether this site, as configured, can start a record from a base."""
        ...


class StreamedGlanceDestination:
    """What Glance destinations share, whichever way they are reached: the stream
    is taken as it comes (no local file), in the disk format the site's settings
    require (``settings.required_disk_format``; None keeps the source's)."""

    settings: Any

    @property
    def required_disk_format(self) -> str | None:
        return self.settings.required_disk_format  # type: ignore[no-any-return]

    @property
    def wants_file(self) -> bool:
        return False

    def distribute(self, image_id: str, tracker: Tracker) -> tuple[DestinationImage, ...]:
        """A Glance image is complete once registered: nothing to copy."""
        return ()

    @property
    def reads_disk_map(self) -> bool:
        return False

    @property
    def reads_while_downloading(self) -> bool:
        return False


class Site(Protocol):
    """A driver for one configured site, whatever it can do."""

    def close(self) -> None:
        """Release connections."""
        ...

    def abort(self) -> None:
        """Cut every open connection now, from another thread, so that a call
        blocked on a silent peer returns with an error (the stall watchdog's
        hook). Never blocks; the driver stays usable."""
        ...


class SourceDriver(SourceSite, Site, Protocol):
    """A driver of a site images can be read from."""


class DestinationDriver(DestinationSite, Site, Protocol):
    """A driver of a site images can be written to."""
