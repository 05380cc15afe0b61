"""Sending a qcow2's blocks while it is still downloading: the download and the
upload overlap instead of following one another.

For a destination that reads the raw disk through a disk map (ebs-direct), the
uploading state starts the source's download into the work dir in a thread
(``Download``) and hands the destination a ``FollowedImage``: a disk map whose
runs come from the qcow2's own tables as they land (``qcow2_follow``), each
once its bytes are on disk. The wall time becomes about the longer of the two
transfers, not their sum (bench/aws_vs_legacy.py).

Nothing is finished on unchecked bytes. After the last run the followed image
waits for the download to end and requires what the stand-alone path requires:
the source's sha512 over every byte, the safety inspection of the whole file,
``qemu-img`` info/check/map (``disk_map.plan``), and the map ``qemu-img`` made
must equal the runs that were sent (a digest of both, merged the same way). Only
then is the file renamed to its staged name and the map saved beside it, so a
resumed run that finds the staged file reads it the usual way. The bytes sent
were read from the very file whose download was verified (it is only ever
appended to). A run that stops earlier leaves no staged file: the blocks it
sent came from an unverified download, so the next run removes that record and
starts again (``uploading``).

An image the tables show cannot be read this way (compressed clusters, say)
raises ``NotFollowable`` once its download is complete and verified; the
uploading state then reads it the stand-alone way.
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

from migratio import disk_map, safety
from migratio.checksums import verified
from migratio.disk_map import Extent
from migratio.drivers.base import SourceImage
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

__all__ = ["Download", "FollowedImage", "NotFollowable", "following_download"]


@contextmanager
def following_download(step: Step) -> Iterator[FollowedImage]:
    """Download the source into the work dir while the caller reads it as it lands;
    the download is stopped when the caller leaves (done or not)."""
    final, saved_map = step.staged_source, step.disk_map_file
    part = final.with_name(f"{final.name}.part")
    for path in (part, final, saved_map.with_name(f".{saved_map.name}.part"), saved_map):
        step.add_artifact("file", str(path))
    step.reserve_space()
    with Download(step, step.source_image, part) as download:
        followed = FollowedImage(step, download, final, saved_map)
        try:
            yield followed
        finally:
            followed.close()


class Download:
    """The source image written to ``part`` by a thread, with how much has landed.

    ``part`` is made anew (a fresh inode): a download left running by an earlier
    run can never write into this one's file.
    """

    def __init__(self, step: Step, image: SourceImage, part: Path) -> None:
        self.part = part
        self.written = 0
        self.finished = False
        self.error: BaseException | None = None
        self._step = step
        self._image = image
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
        step, image = self._step, self._image
        error: BaseException | None = None
        try:
            with (
                filling(self.part, image.size),
                step.source.read(image.id) as chunks,
                self.part.open("r+b", buffering=0) as out,
            ):
                paced = step.paced(chunks, step.migration.source_site)
                for chunk in verified(paced, image.sha512, f"source image {image.id}"):
                    if self._stop.is_set():
                        return
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) :]
                    with self._changed:
                        self.written += len(chunk)
                        self._changed.notify_all()
        except BaseException as exc:  # handed to the reader, raised there
            error = exc
        finally:
            with self._changed:
                self.finished, self.error = True, error
                self._changed.notify_all()

    def wait_for(self, end: int, between: Callable[[], None]) -> None:
        """Until ``end`` bytes have landed or the download has ended (raising its error)."""
        while True:
            with self._changed:
                if self.written < end and not self.finished:
                    self._changed.wait(WAIT_SECONDS)
                if self.error is not None:
                    raise self.error
                if self.written >= end or self.finished:
                    return
            between()

    def wait_end(self, between: Callable[[], None]) -> None:
        """Until every byte has landed and the sha512 matched (raising any error)."""
        self.wait_for(self._image.size or 0, between)
        while not self.finished:
            self.wait_for(self.written + 1, between)


class FollowedImage:
    """A disk map (``disk_map.DiskMap``'s ``size`` and ``extents``) of a qcow2 that
    is still downloading, read from ``download.part``; ``final`` and ``saved_map``
    appear once it is complete and checked (see the module docstring)."""

    def __init__(self, step: Step, download: Download, final: Path, saved_map: Path) -> None:
        self.path = download.part
        self._step = step
        self._download = download
        self._final = final
        self._saved_map = saved_map
        self._fd = os.open(download.part, os.O_RDONLY)
        self.size = layout(self._read(0, HEAD_BYTES)).size

    def close(self) -> None:
        os.close(self._fd)

    def _read(self, offset: int, length: int) -> bytes:
        self._download.wait_for(offset + length, self._step.checkpoint)
        return os.pread(self._fd, length, offset)

    def extents(self) -> Iterator[Extent]:
        """The image's data runs in disk order, each once it has landed; ends only
        when the whole image is verified and agrees with ``qemu-img map``."""
        sent = _RunDigest()
        try:
            for run in runs(self._read):
                sent.add(run)
                yield run
        except NotFollowable:
            self._settle(None)
            raise
        self._settle(sent.hexdigest())

    def _settle(self, sent: str | None) -> None:
        """Wait for the download, check it whole as the stand-alone path does, map it
        with ``qemu-img`` and stage it under its final name. Unless the runs sent
        (their digest, ``sent``) are what ``qemu-img`` maps, raise NotFollowable."""
        self._download.wait_end(self._step.checkpoint)
        fmt = self._step.source_image.disk_format
        safety.check_file(self.path, fmt)
        mapped = disk_map.plan(self.path, fmt, self._saved_map)
        agrees = mapped is not None and mapped.size == self.size
        if agrees and sent is not None and mapped is not None:
            digest = _RunDigest()
            for run in mapped.extents():
                digest.add(run)
            agrees = digest.hexdigest() == sent
        self.path.rename(self._final)
        if sent is None:
            return
        if mapped is None:
            raise NotFollowable("qemu-img cannot map it for reading in place")
        if not agrees:
            log.error("%s: its qcow2 tables as read differ from qemu-img map", self._final)
            raise NotFollowable("qemu-img maps it differently from its tables as read")


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
