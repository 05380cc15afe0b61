"""Admission to the work dir: a migration that stages files starts only when they fit.

Running out of space mid-write is handled (``workspace.filling``: a transient
error, the partial file removed), but a migration that cannot fit should not
start at all: it would only fill the disk, fail, and take space from those that
would have fitted. So before a state writes its files it asks for the space it
will still need (``reserve``); while free space, less what the other migrations
running in this daemon still have to write, is too small, the migration waits
(``WaitingForSpace``) without holding its lease or a worker.

What a migration still needs is recomputed from its files on every question:
space already written is already gone from the free space, so each planned
file counts only for what it has not taken yet, and a reservation shrinks as
its migration writes.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from migratio.drivers.base import SourceImage
from migratio.errors import PermanentError, StepInterrupted

# What a converted file may take beyond its data: qcow2's tables (an 8-byte entry
# per 64 KiB cluster, refcounts) are well inside data/1024 plus this.
METADATA_MARGIN = 1 << 20

# The audit note of a waiting migration begins with this (written once per wait).
WAITING_NOTE = "waiting for work-dir space"


class WaitingForSpace(StepInterrupted):
    """The migration's files do not fit in the work dir now: try again later.

    Not a failure: it costs no attempt of the retry budget.
    """


@dataclass(frozen=True)
class DiskSpace:
    """A file system's size and free bytes (``shutil.disk_usage``'s, for a non-root user)."""

    total: int
    free: int


def disk_space(path: Path) -> DiskSpace:
    usage = shutil.disk_usage(path)
    return DiskSpace(usage.total, usage.free)


def planned_files(
    image: SourceImage, staged: Path, converted: Path | None, data: int | None = None
) -> dict[Path, int]:
    """The files a migration writes and the most each will take.

    The staged source is the image's size. A conversion writes the image's data
    (a raw file is sparse: its holes take no space; qcow2 adds its tables, a
    small margin): ``data`` once the staged file can be measured (``qemu-img
    map``), else the image's size -- the data of any image but a compressed one,
    which the measure then corrects before the conversion starts. Asking for the
    virtual size instead would keep a 1 TiB disk holding 2 GiB waiting forever.
    """
    files = {staged: image.size}
    if converted is not None:
        written = image.size if data is None else data
        files[converted] = written + written // 1024 + METADATA_MARGIN
    return files


def allocated(path: Path) -> int:
    """Bytes the file (or its ``.part`` while being written) takes on disk now."""
    taken = 0
    for candidate in (path, path.with_name(path.name + ".part")):
        try:
            taken += candidate.stat().st_blocks * 512
        except FileNotFoundError:
            continue
    return taken


def outstanding(files: Mapping[Path, int]) -> int:
    """What ``files`` still have to take: each planned size less what it holds."""
    return sum(max(0, size - allocated(path)) for path, size in files.items())


class WorkDirSpace:
    """The reservations of the migrations running in one daemon, against one work dir.

    work_dir: where the files go. disk: how full its file system is (tests give
        a small pretend disk).
    """

    def __init__(self, work_dir: Path, disk: Callable[[Path], DiskSpace] = disk_space) -> None:
        self.work_dir = work_dir
        self._disk = disk
        self._lock = threading.Lock()
        self._reserved: dict[str, dict[Path, int]] = {}

    def reserve(self, migration_id: str, files: Mapping[Path, int]) -> None:
        """Hold space for ``files`` of this migration, or raise ``WaitingForSpace``
        (``PermanentError`` if they could never fit in this file system). Held
        until ``release``: later states of the same run are not asked again."""
        with self._lock:
            held = self._reserved.get(migration_id, {})
            if all(held.get(path, -1) >= size for path, size in files.items()):
                # Admitted already in this run: a promise kept. Space another writer
                # takes meanwhile makes the write fail (WorkDirFull), not wait.
                # Asked again for more (the measured data of a compressed image),
                # it is a new question.
                return
            space = self._disk(self.work_dir)
            needed = outstanding(files)
            others = outstanding(self._planned(besides=migration_id, shared=files))
            if sum(files.values()) > space.total:
                raise PermanentError(
                    f"work dir {self.work_dir} is too small for this image: its files need "
                    f"{sum(files.values())} bytes, the file system holds {space.total}"
                )
            if needed > space.free - others:
                raise WaitingForSpace(
                    f"{WAITING_NOTE}: needs {needed} bytes, {space.free} free in "
                    f"{self.work_dir}, {others} of them reserved by running migrations"
                )
            self._reserved[migration_id] = {**self._reserved.get(migration_id, {}), **files}

    def release(self, migration_id: str) -> None:
        """The migration stopped running here: its files count only as written."""
        with self._lock:
            self._reserved.pop(migration_id, None)

    def reserved(self) -> int:
        """Bytes the running migrations still have to write (for tests and status)."""
        with self._lock:
            return outstanding(self._planned())

    def _planned(
        self, besides: str = "", shared: Mapping[Path, int] | None = None
    ) -> dict[Path, int]:
        """The files the running migrations (but ``besides``) will write, each once:
        the members of a fan-out group plan the group's files alike. A file in
        ``shared`` is left out, already counted by who asks."""
        files: dict[Path, int] = {}
        for holder, planned in self._reserved.items():
            for path, size in planned.items():
                if holder != besides and path not in (shared or {}):
                    files[path] = max(files.get(path, 0), size)
        return files
