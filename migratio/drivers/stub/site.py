"""An in-memory site, source and destination at once, for tests of the engine.

Images (what a source serves) and records (what a destination holds) live in two
dicts a test reads and writes directly; statuses are the engine's own enums. How
the site behaves is a handful of attributes a test may set at any time, and what
goes wrong is scripted (``Scriptable``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from migratio.checksums import file_chunks
from migratio.disk_map import DataRuns
from migratio.drivers.base import (
    BASE_RECORD,
    MIGRATION_ID,
    BaseVersion,
    DestinationImage,
    ImageStatus,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
    SourceImage,
    Tracker,
    Transfer,
)
from migratio.drivers.stub import copies
from migratio.drivers.stub.holdings import StubImage, StubRecord
from migratio.drivers.stub.scripting import Scriptable
from migratio.errors import ImageNotFound, NotFound, PermanentError, TransientError

# Small, so that a payload of a few hundred KiB is already many chunks: every
# checkpoint and callback between them gets its turn.
CHUNK_SIZE = 64 * 1024

# Best first: the record an earlier run got furthest with (as the real drivers rank).
_RANK = {RecordStatus.COMPLETE: 0, RecordStatus.OPEN: 1, RecordStatus.BROKEN: 2}


class StubSite(Scriptable):
    """A site held in memory: implements ``SourceDriver`` and ``DestinationDriver``.

    For tests only; the daemon never opens one (``DRIVERS`` does not know it):
    a test hands ``StubSites`` to the supervisor.

    site_id: named in error messages.
    required_disk_format, wants_file, reads_disk_map: what the destination asks
        of the engine (with ``reads_disk_map``, a raw payload is read from the
        staged image through its disk map, as ebs-direct does; with
        ``reads_while_downloading`` too, a qcow2's while it downloads).
    resumable: an interrupted ``receive`` keeps what it got and the next one asks
        the payload from there, then checks the whole against ``transfer.sha512``
        (as the SSH site does); otherwise every ``receive`` starts at byte 0 (as
        Glance does).
    returns_sha512: ``receive`` reports the sha512 of what the record holds.
        A resumed or file transfer depends on it; the engine computes it in
        flight otherwise.
    interrupted_status: what a record becomes when ``receive`` is interrupted
        (BROKEN: the site cannot continue it).
    registers_image: ``register`` makes a new image out of the record (as an
        AMI is made from a snapshot) instead of completing the record itself.
    copy_regions: ``distribute`` copies the image once per name (``copies``).
    chunk_size: the most ``read`` hands out at once.
    takes_base_version: a record may start from an earlier version's
        (``RecordSpec.base``, as ebs-direct does); ``bases`` then says, per record,
        what its ``receive`` was told it started from, and each finished record's
        manifest (its SHA-256) is kept through the transfer.
    """

    def __init__(
        self,
        site_id: str,
        *,
        required_disk_format: str | None = None,
        wants_file: bool = False,
        reads_disk_map: bool = False,
        reads_while_downloading: bool = True,
        resumable: bool = False,
        returns_sha512: bool = True,
        interrupted_status: RecordStatus = RecordStatus.OPEN,
        registers_image: bool = False,
        copy_regions: tuple[str, ...] = (),
        chunk_size: int = CHUNK_SIZE,
        takes_base_version: bool = False,
    ) -> None:
        super().__init__()
        self.site_id = site_id
        self.required_disk_format = required_disk_format
        self.wants_file = wants_file
        self.reads_disk_map = reads_disk_map
        self.reads_while_downloading = reads_while_downloading
        self.resumable = resumable
        self.returns_sha512 = returns_sha512
        self.interrupted_status = interrupted_status
        self.registers_image = registers_image
        self.copy_regions = copy_regions
        self.chunk_size = chunk_size
        self.takes_base_version = takes_base_version
        self.bases: dict[str, BaseVersion | None] = {}
        self.images: dict[str, StubImage] = {}
        self.records: dict[str, StubRecord] = {}
        # (image id, offset) of every read, and the streams still open.
        self.reads: list[tuple[str, int]] = []
        self.open_streams = 0
        self.closed = 0
        self._lock = threading.Lock()

    # -- for tests ------------------------------------------------------------

    def add_image(self, data: bytes, name: str = "template", **fields: Any) -> StubImage:
        """A source image holding ``data``; ``fields`` as ``StubImage`` takes them."""
        image = StubImage(str(uuid.uuid4()), name, data, **fields)
        self.images[image.id] = image
        return image

    def record(self, record_id: str | None) -> StubRecord:
        """The record a migration names (its ``dest_image_id``); one that names none
        fails here, where the test reads it."""
        assert record_id is not None, "no record named"
        return self.records[record_id]

    def add_copy(self, provenance: Provenance, data: bytes, disk_format: str = "raw") -> StubRecord:
        """A finished copy an earlier migration left, carrying ``provenance``."""
        record = self._new_record("copy", disk_format, "bare", provenance.as_properties())
        record.data = bytearray(data)
        record.status = RecordStatus.COMPLETE
        return record

    # -- source ---------------------------------------------------------------

    def describe(self, image_id: str) -> SourceImage:
        self._enter("describe")
        return self._image(image_id).describe()

    @contextmanager
    def read(self, image_id: str, offset: int = 0) -> Iterator[Iterator[bytes]]:
        self._enter("read")
        image = self._image(image_id)
        if image.status is not ImageStatus.AVAILABLE:
            raise PermanentError(f"site {self.site_id}: image {image_id} has no data")
        with self._lock:
            self.reads.append((image_id, offset))
            self.open_streams += 1
        try:
            yield self._stream(image.data, offset)
        finally:
            with self._lock:
                self.open_streams -= 1

    def _stream(self, data: bytes, offset: int) -> Iterator[bytes]:
        position = offset
        while position < len(data):
            self._passed("read", position)
            chunk = data[position : position + self.chunk_size]
            yield chunk
            position += len(chunk)
        self._passed("read", position)

    # -- destination ----------------------------------------------------------

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        self._enter("find_copy")
        wanted = provenance.as_properties().items()
        for record in self._records():
            if (
                record.status is RecordStatus.COMPLETE
                and record.disk_format == disk_format
                and record.properties.items() >= wanted
            ):
                return record.view()
        return None

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """The record furthest along (then the newest); records before images."""
        self._enter("find_record")
        tagged = [r for r in reversed(self._records()) if r.migration_id == migration_id]
        if not tagged:
            return None
        return min(tagged, key=lambda r: (bool(r.parts), _RANK[r.status])).view()

    def get_record(self, record_id: str) -> DestinationImage | None:
        self._enter("get_record")
        with self._lock:
            record = self.records.get(record_id)
        return None if record is None else record.view()

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        self._enter("create_record")
        tag = {MIGRATION_ID: spec.migration_id}
        if spec.base is not None and self.takes_base_version:
            tag[BASE_RECORD] = spec.base.record_id
        return self._new_record(spec.name, spec.disk_format, spec.container_format, tag).view()

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        self._enter("receive")
        record = self._record(record_id)
        if record.status is not RecordStatus.OPEN:
            raise PermanentError(
                f"site {self.site_id}: record {record_id} is {record.status}: cannot take bytes"
            )
        # Like the SSH site: resumed only when the whole can be checked at the end.
        resumes = self.resumable and transfer.sha512 is not None
        if not resumes:
            record.data = bytearray()
        offset = len(record.data)
        try:
            for chunk in self._payload(transfer, offset):
                record.data += chunk
                self._passed("receive", len(record.data))
                if self.wants_file:  # no stream reports progress for us
                    transfer.progress(len(record.data))
        except BaseException:
            record.status = self.interrupted_status
            if not resumes:
                record.data = bytearray()
            raise
        held = hashlib.sha512(record.data).hexdigest()
        if offset and held != transfer.sha512:
            size, record.data = len(record.data), bytearray()
            raise TransientError(
                f"site {self.site_id}: record {record_id} held {size} bytes "
                "of another sha512; sending it again"
            )
        record.status = RecordStatus.COMPLETE
        if self.takes_base_version:
            self.bases[record_id] = transfer.base
            transfer.keep_manifest(record_id, hashlib.sha256(record.data).digest())
        return held if self.returns_sha512 else None

    def _payload(self, transfer: Transfer, offset: int) -> Iterator[bytes]:
        if not self.wants_file:
            return transfer.chunks(offset)
        if transfer.path is None:
            raise PermanentError(f"site {self.site_id}: wants a file, was given a stream")
        if transfer.disk_map is not None:
            return self._mapped(transfer.path, transfer.disk_map, offset)
        return file_chunks(transfer.path, self.chunk_size, offset)

    def _mapped(self, image: Path, disk_map: DataRuns, offset: int) -> Iterator[bytes]:
        """The raw disk a disk map describes, read from the image run by run as the
        map hands them on (as ebs-direct does: the image may still be arriving)."""
        if not self.reads_disk_map:
            raise PermanentError(f"site {self.site_id}: was given a disk map it cannot read")
        pending = bytearray()
        position = 0  # of the disk, up to which ``pending`` holds it
        with image.open("rb", buffering=0) as handle:
            for run in chain(disk_map.extents(), [None]):
                start = disk_map.size if run is None else run.start
                pending += bytes(start - position)
                if run is not None:
                    pending += os.pread(handle.fileno(), run.length, run.offset)
                    start += run.length
                position = start
                while len(pending) >= self.chunk_size or (run is None and pending):
                    chunk, pending = bytes(pending[: self.chunk_size]), pending[self.chunk_size :]
                    done = position - len(pending)
                    if done > offset:
                        yield chunk[max(0, len(chunk) - (done - offset)) :]

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        self._enter("register")
        record = self._record(record_id)
        for key in ("disk_format", "container_format"):
            if getattr(record, key) != getattr(registration, key):
                raise PermanentError(
                    f"site {self.site_id}: register {record_id}: {key} is "
                    f"{getattr(record, key)!r}, expected {getattr(registration, key)!r}"
                )
        if self.registers_image and not record.parts:
            record = self._image_of(record)
        record.name = registration.name
        record.min_disk = registration.min_disk
        record.min_ram = registration.min_ram
        record.architecture = registration.architecture
        record.properties.update(registration.properties)
        record.tags = registration.tags
        record.protected = registration.protected
        return record.view()

    def _image_of(self, snapshot: StubRecord) -> StubRecord:
        """The image made from ``snapshot``: found again when registering is re-entered."""
        for record in self._records():
            if snapshot.id in record.parts:
                return record
        image = self._new_record(
            snapshot.name, snapshot.disk_format, snapshot.container_format, snapshot.properties
        )
        image.parts = (snapshot.id,)
        image.data = bytearray(snapshot.data)
        image.status = snapshot.status
        return image

    def distribute(self, image_id: str, tracker: Tracker) -> tuple[DestinationImage, ...]:
        """One copy of the image per ``copy_regions`` entry (``copies``)."""
        self._enter("distribute")
        return copies.distribute(self, self._record(image_id), tracker)

    def remove(self, record_id: str) -> None:
        self._enter("remove")
        with self._lock:
            self.records.pop(record_id, None)

    def close(self) -> None:
        self._enter("close")
        with self._lock:
            self.closed += 1

    # -- internals ------------------------------------------------------------

    def _image(self, image_id: str) -> StubImage:
        image = self.images.get(image_id)
        if image is None:
            raise ImageNotFound(f"site {self.site_id}: image {image_id} does not exist")
        return image

    def _record(self, record_id: str) -> StubRecord:
        with self._lock:
            record = self.records.get(record_id)
        if record is None:
            raise NotFound(f"site {self.site_id}: record {record_id} does not exist")
        return record

    def _records(self) -> list[StubRecord]:
        with self._lock:
            return list(self.records.values())

    def _new_record(
        self, name: str, disk_format: str, container_format: str, properties: dict[str, str]
    ) -> StubRecord:
        record = StubRecord(
            str(uuid.uuid4()), name, disk_format, container_format, properties=dict(properties)
        )
        with self._lock:
            self.records[record.id] = record
        return record
