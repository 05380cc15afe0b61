"""What a state handler gets: its migration, the two sites and fenced ledger access.

Handlers return an ``Advance`` naming the trigger that ends their state; the
supervisor commits it. Long transfers call ``checkpoint`` so that shutdown, a
lost lease or a cancel request stop them at a safe point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from migratio import faults, qemu, stall
from migratio.admission import WorkDirSpace, planned_files
from migratio.bandwidth import Bandwidth
from migratio.disk_map import DiskMap
from migratio.drivers.base import DestinationSite, ImageStatus, SourceImage, SourceSite
from migratio.errors import CancelRequested, LeaseLost, ShuttingDown
from migratio.feedback.progress import ProgressPacer
from migratio.group_files import group_dir
from migratio.ledger.store import ArtifactStatus, Ledger, Migration
from migratio.machine import State

PROGRESS_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class Advance:
    """A handler's verdict: fire ``trigger``, with this audit message, recorded
    fields and the artifacts it keeps."""

    trigger: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    # Artifacts that became the result: settled "kept" with the transition itself.
    keep: tuple[str, ...] = ()


@dataclass
class Signals:
    """Why a running step should stop; set from other threads."""

    shutting_down: threading.Event = field(default_factory=threading.Event)
    lost: set[str] = field(default_factory=set)


class Step:
    """One handler run on one migration, on behalf of one lease owner."""

    def __init__(
        self,
        migration: Migration,
        *,
        ledger: Ledger,
        owner: str,
        source: SourceSite,
        destination: DestinationSite,
        work_dir: Path,
        signals: Signals,
        progress_seconds: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        stall_seconds: float = stall.STALL_SECONDS,
        space: WorkDirSpace | None = None,
        bandwidth: Bandwidth | None = None,
    ) -> None:
        self.migration = migration
        self.ledger = ledger
        self.owner = owner
        self.source = source
        self.destination = destination
        self.work_dir = work_dir
        self.signals = signals
        self.space = space
        self.bandwidth = bandwidth
        self._progress_seconds = progress_seconds
        self._last_progress = 0.0
        self._clock = clock
        self._pacer = ProgressPacer()
        # Transfers run under ``watchdog.watching()``; checkpoints feed it.
        self.watchdog = stall.Watchdog(
            stall_seconds, f"migration {migration.id}", (source, destination)
        )

    @property
    def source_image(self) -> SourceImage:
        """The source description recorded by the exporting state (which records
        only an available image; ledgers before 0.2 stored Glance's "active")."""
        recorded = self.migration.source_image
        if recorded is None:
            raise RuntimeError(f"migration {self.migration.id} has no recorded source image")
        # JSON gave the tags back as a list; earlier ledgers recorded none.
        tags = tuple(recorded.get("tags") or ())
        return SourceImage(**{**recorded, "status": ImageStatus.AVAILABLE, "tags": tags})

    @property
    def target_format(self) -> str:
        return self.destination.required_disk_format or self.source_image.disk_format

    @property
    def needs_conversion(self) -> bool:
        return self.target_format != self.source_image.disk_format

    @property
    def stages_payload(self) -> bool:
        """Whether the payload goes through a file in the work dir (not streamed):
        always in a fan-out group, whose members share one read of the source."""
        grouped = self.migration.group_id is not None
        return self.needs_conversion or self.destination.wants_file or grouped

    @property
    def follows_group_read(self) -> bool:
        """A grouped member that takes the image as it is: it streams the group's
        one read of the source as it is spooled (``group_read``), not once staged."""
        grouped = self.migration.group_id is not None
        return grouped and not (self.needs_conversion or self.destination.wants_file)

    @property
    def follows_download(self) -> bool:
        """Whether the destination reads the raw disk of a qcow2 source while it is
        still downloading (``migratio.following``) rather than once it is staged.
        Not in a fan-out group (its members share one staged file) nor once staged."""
        return (
            self.needs_conversion
            and self.destination.reads_disk_map
            and self.destination.reads_while_downloading
            and self.migration.group_id is None
            and self.source_image.disk_format.lower() == "qcow2"
            and not self.staged_source.exists()
        )

    @property
    def staged_source(self) -> Path:
        return self._file(f"source.{self.source_image.disk_format}")

    @property
    def converted_file(self) -> Path:
        return self._file(f"converted.{self.target_format}")

    @property
    def disk_map_file(self) -> Path:
        return self._file("disk.map")

    @property
    def disk_map(self) -> DiskMap | None:
        """The staged image's disk map, once converting chose to let the
        destination read the raw payload in place instead of converting."""
        if not (self.needs_conversion and self.destination.reads_disk_map):
            return None
        saved = self.disk_map_file
        return DiskMap(saved) if saved.exists() else None

    @property
    def payload_file(self) -> Path:
        """The file the destination receives from, when the payload is staged
        (the staged image itself when it is read through its disk map)."""
        if self.needs_conversion and self.disk_map is None:
            return self.converted_file
        return self.staged_source

    def _file(self, name: str) -> Path:
        """A staged file: the group's (shared by its members) or this migration's own."""
        if self.migration.group_id is None:
            return self.path(name)
        return group_dir(self.work_dir, self.migration.group_id) / name

    def reserve_space(self) -> None:
        """Before writing the staged or converted file: hold the work-dir space it
        will still take, or wait (``WaitingForSpace``) until it fits."""
        if self.space is None or not self.stages_payload:
            return
        converted = self.converted_file if self.needs_conversion else None
        if self.destination.reads_disk_map and not self.staged_source.exists():
            # Most likely read in place; converting asks again if it must convert.
            converted = None
        data = None
        if converted is not None and self.staged_source.exists():
            # Staged (and checked safe) already: what the conversion writes is known.
            data = qemu.data_size(self.staged_source, self.source_image.disk_format)
        files = planned_files(self.source_image, self.staged_source, converted, data)
        self.space.reserve(self.migration.id, files)

    def path(self, name: str) -> Path:
        """A file in this migration's own work directory."""
        directory = self.work_dir / self.migration.id
        directory.mkdir(parents=True, exist_ok=True)
        return directory / name

    def record(self, **fields: Any) -> None:
        self.ledger.record(self.migration.id, self.owner, **fields)
        self.migration = replace(self.migration, **fields)

    def add_artifact(self, kind: str, ref: str, site: str | None = None) -> None:
        self.ledger.add_artifact(self.migration.id, kind, ref, site, owner=self.owner)

    def note(self, message: str) -> None:
        """A line in the audit trail, no state change."""
        self.ledger.note(self.migration.id, self.owner, message)

    def remove_record(self, record_id: str) -> None:
        """Delete a destination record this migration no longer needs."""
        self.destination.remove(record_id)
        self.ledger.settle_ref(
            self.migration.id, record_id, ArtifactStatus.REMOVED, owner=self.owner
        )

    def checkpoint(self, bytes_done: int | None = None, *, force: bool = False) -> None:
        """Stop here if asked to; record progress at most once a second, and while
        uploading, a progress line for the platform when one is due."""
        self.stop_if_signalled()
        if bytes_done is None:
            return
        self.watchdog.saw(bytes_done)
        faults.point("transfer.bytes", self.migration.state, amount=bytes_done)
        now = self._clock()
        rate = None
        if self.migration.state == State.UPLOADING:
            rate = self._pacer.due(bytes_done, self.migration.bytes_total, now)
        if force or rate is not None or now - self._last_progress >= self._progress_seconds:
            self._last_progress = now
            cancel = self.ledger.record_progress(
                self.migration.id, self.owner, bytes_done, rate=rate
            )
            self.migration = replace(self.migration, bytes_done=bytes_done)
            if cancel:
                raise CancelRequested("cancelled by operator")

    def stop_if_signalled(self) -> None:
        """Raise if the daemon is stopping or the lease was lost; safe from any thread."""
        if self.migration.id in self.signals.lost:
            raise LeaseLost(f"lease on migration {self.migration.id} lost")
        if self.signals.shutting_down.is_set():
            raise ShuttingDown("daemon stopping")

    def paced(self, chunks: Iterable[bytes], *sites: str) -> Iterable[bytes]:
        """Chunks moved to or from ``sites``, within their caps and the daemon's."""
        return chunks if self.bandwidth is None else self.bandwidth.paced(chunks, sites)

    def pace(self, amount: int, *sites: str) -> None:
        """Wait until ``amount`` bytes may be moved to or from ``sites``."""
        if self.bandwidth is not None:
            self.bandwidth.pace(amount, sites)

    def stop_if_asked(self) -> None:
        """Between the polls of a wait with no bytes moving (copies being made):
        stop on shutdown, a lost lease or an operator's cancel."""
        self.checkpoint()
        if self.ledger.get(self.migration.id).cancel_requested:
            raise CancelRequested("cancelled by operator")

    @property
    def tracker(self) -> StepTracker:
        """What the destination records its copies through while it finishes an image."""
        return StepTracker(self)

    def tracked(self, chunks: Iterable[bytes], start: int = 0) -> Iterator[bytes]:
        """Pass chunks through, reporting progress and honouring checkpoints."""
        done = start
        for chunk in chunks:
            self.checkpoint(done)
            yield chunk
            done += len(chunk)
        self.checkpoint(done, force=True)


class StepTracker:
    """The ``Tracker`` a destination is given by a step: its records become the
    migration's artifacts at the destination site; its waits are stop points."""

    def __init__(self, step: Step) -> None:
        self._step = step

    def add_artifact(self, kind: str, ref: str) -> None:
        self._step.add_artifact(kind, ref, self._step.migration.dest_site)

    def checkpoint(self) -> None:
        self._step.stop_if_asked()
