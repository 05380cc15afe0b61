"""Sending a qcow2's blocks while it is still downloading: the download and the
upload overlap instead of following one another.

For a destination that reads the raw disk through a disk map (ebs-direct), the
uploading state starts the source's download into the work dir in a thread
(``Download``) and hands the destination a ``FollowedImage``: a disk map whose
runs come from the qcow2's own tables as they land (``qcow2_follow``), each
once its bytes are on disk. The wall time becomes about the longer of the two
transfers, not their sum (bench/aws_vs_legacy.py).

Nothing is finished on unchecked bytes. As soon as the download ends, its
thread checks what the stand-alone path checks -- the source's sha512 over
every byte, the safety inspection of the whole file, ``qemu-img`` info, check
and map (``disk_map.plan``, which saves the map) -- and that the runs read from
the tables (the same bytes the reader read them from: the file is only ever
appended to) are the runs ``qemu-img map`` finds (a digest of both, merged the
same way). Only then is the file given its staged name; the followed
image's last run is handed on only after that, so the snapshot is never
completed before. From the rename on, a resumed run finds the staged file and
its map and goes on the usual way (the journal's blocks came from that very
file). A run that stops before leaves no staged file: the blocks it sent came
from a download never verified, so the next run drops that record and starts
again (``uploading``).

An image the tables show cannot be read this way (compressed clusters, say)
raises ``NotFollowable`` once its download is complete and verified; the
uploading state drops what was sent, stages the file (``keep_download``) and
reads it the stand-alone way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from migratio import disk_map, faults, safety
from migratio.checksums import verified
from migratio.disk_map import Extent
from migratio.qcow2_follow import HEAD_BYTES, NotFollowable, layout, runs
from migratio.step import Step
from migratio.workspace import filling

log = logging.getLogger(__name__)

# While waiting for bytes, the step's checkpoint is called this often (shutdown,
# lost lease); the stall watchdog sees the wait through the destination's progress.
WAIT_SECONDS = 1.0
# How long a stopped download may take to notice (its next chunk, or its read timeout).
JOIN_SECONDS = 30.0

_RUN = struct.Struct(">QQQ")

__all__ = ["Download", "FollowedImage", "NotFollowable", "following_download", "keep_download"]


@contextmanager
def following_download(step: Step) -> Iterator[FollowedImage]:
    """Download the source into the work dir while the caller reads it as it lands;
    the download is stopped when the caller leaves (done or not)."""
    final, saved_map = step.staged_source, step.disk_map_file
    part = final.with_name(f"{final.name}.part")
    for path in (part, final, saved_map.with_name(f".{saved_map.name}.part"), saved_map):
        step.add_artifact("file", str(path))
    with Download(step, part, final, saved_map) as download:
        try:
            followed = FollowedImage(step, download)
            try:
                yield followed
            finally:
                followed.close()
        except NotFollowable:
            # Raised on only once the download is whole and verified (else its own
            # error is raised): what ``keep_download`` relies on.
            download.wait_settled(step.checkpoint)
            raise
    if final.exists():  # staged under its own name by the download's checks
        part.unlink(missing_ok=True)


class Download:
    """The source image written to ``part`` by a thread, then checked whole (see the
    module docstring) and linked as ``final`` with its disk map saved beside it.

    ``part`` is made anew (a fresh inode): a download left running by an earlier
    run can never write into this one's file.
    """

    def __init__(self, step: Step, part: Path, final: Path, saved_map: Path) -> None:
        self.part, self.final, self.saved_map = part, final, saved_map
        self.written = 0
        self.landed = False  # every byte written
        self.settled = False  # and checked (``error`` says how that went)
        self.error: BaseException | None = None
        self._step = step
        self._image = step.source_image
        self._stop = threading.Event()
        self._changed = threading.Condition()
        part.unlink(missing_ok=True)
        part.touch()
        self._thread = threading.Thread(
            target=self._run, name=f"download-{step.migration.id}", daemon=True
        )

    def __enter__(self) -> Download:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(JOIN_SECONDS)
        if self._thread.is_alive():
            log.warning("download of %s still running after the step ended", self.part.name)

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._download()
            with self._changed:
                self.landed = True
                self._changed.notify_all()
            self._check()
        except BaseException as exc:  # handed to the reader, raised there
            error = exc
        finally:
            with self._changed:
                self.landed = self.settled = True
                self.error = error
                self._changed.notify_all()

    def _download(self) -> None:
        step, image = self._step, self._image
        with (
            filling(self.part, image.size),
            step.source.read(image.id) as chunks,
            self.part.open("r+b", buffering=0) as out,
        ):
            paced = step.paced(chunks, step.migration.source_site)
            for chunk in verified(paced, image.sha512, f"source image {image.id}"):
                if self._stop.is_set():
                    raise _Stopped()
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) :]
                with self._changed:
                    self.written += len(chunk)
                    self._changed.notify_all()
                faults.point("follow.bytes", amount=self.written)

    def _check(self) -> None:
        """What the stand-alone path checks, and that ``qemu-img map`` finds the runs
        read from the tables (the same bytes the reader read them from). Renamed to
        its staged name only if all holds; else left for the caller to discard
        what was sent first (``keep_download``)."""
        fmt = self._image.disk_format
        safety.check_file(self.part, fmt)
        with self.part.open("rb") as handle:
            fd = handle.fileno()
            tables = _RunDigest()
            for run in runs(lambda offset, length: os.pread(fd, length, offset)):
                tables.add(run)
        mapped = disk_map.plan(self.part, fmt, self.saved_map)
        if mapped is None:
            raise NotFollowable("qemu-img cannot map it for reading in place")
        qemu_runs = _RunDigest()
        for run in mapped.extents():
            qemu_runs.add(run)
        if qemu_runs.hexdigest() != tables.hexdigest():
            log.error("%s: its qcow2 tables as read differ from qemu-img map", self.part)
            raise NotFollowable("qemu-img maps it differently from its tables as read")
        # A second name, not a rename: the reader may not have opened ``part`` yet.
        os.link(self.part, self.final)

    def wait_for(self, end: int, between: Callable[[], None]) -> None:
        """Until ``end`` bytes have landed or all have (raising the download's error)."""
        while True:
            with self._changed:
                if self.written < end and not self.landed and self.error is None:
                    self._changed.wait(WAIT_SECONDS)
                if self.error is not None:
                    raise self.error
                if self.written >= end or self.landed:
                    return
            between()

    def wait_settled(self, between: Callable[[], None]) -> None:
        """Until the download is complete and checked (raising what went wrong)."""
        while True:
            with self._changed:
                if not self.settled:
                    self._changed.wait(WAIT_SECONDS)
                if self.settled:
                    if self.error is not None:
                        raise self.error
                    return
            between()


class _Stopped(Exception):
    """The step ended before the download did."""


def keep_download(step: Step) -> None:
    """After NotFollowable (raised only once the download was verified) and once what
    was sent is discarded: stage the downloaded file under its name."""
    final = step.staged_source
    part = final.with_name(f"{final.name}.part")
    if part.exists() and not final.exists():
        part.rename(final)


class FollowedImage:
    """A disk map (``disk_map.DiskMap``'s ``size`` and ``extents``) of a qcow2 that
    is still downloading, read from ``download.part`` as it lands."""

    def __init__(self, step: Step, download: Download) -> None:
        self.path = download.part
        self._step = step
        self._download = download
        self._fd = os.open(download.part, os.O_RDONLY)
        try:
            self.size = layout(self._read(0, HEAD_BYTES)).size
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        os.close(self._fd)

    def _read(self, offset: int, length: int) -> bytes:
        self._download.wait_for(offset + length, self._step.checkpoint)
        return os.pread(self._fd, length, offset)

    def extents(self) -> Iterator[Extent]:
        """The image's data runs in disk order, each once it has landed; ends only
        once the whole image is verified and agrees with ``qemu-img map``."""
        yield from runs(self._read)
        self._download.wait_settled(self._step.checkpoint)


class _RunDigest:
    """SHA-256 over a disk's data runs, adjacent ones merged (as ``disk_map`` saves
    them), so two listings of the same disk give the same digest."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._last: Extent | None = None

    def add(self, run: Extent) -> None:
        last = self._last
        joins = last and last.start + last.length == run.start
        if last and joins and last.offset + last.length == run.offset:
            self._last = Extent(last.start, last.length + run.length, last.offset)
            return
        if last:
            self._hash.update(_RUN.pack(last.start, last.length, last.offset))
        self._last = run

    def hexdigest(self) -> str:
        if self._last:
            self._hash.update(_RUN.pack(self._last.start, self._last.length, self._last.offset))
            self._last = None
        return self._hash.hexdigest()
