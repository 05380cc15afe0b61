"""The group's one read of the source, written to its spool file and followed by
the members that take the image as it is (same disk format, no file wanted).

One writer at a time appends the source to ``source.<format>.part`` at the
source's pace, never waiting for any reader, and renames it to its final name
once the whole is verified. The writer is whoever holds the file's lock: a
member that stages (in exporting) or a following member that found no writer
(a thread of its uploading step). Followers read the spool behind the writer
from their own offset, from the page cache while they keep up, from disk when
they lag: a slow or stopped destination holds back only itself, and the buffer
between the fastest and the slowest reader is the spool, bounded by the image
size (reserved in the work dir like any staged file), with at most a chunk per
follower in memory. Followers need not hash what they read: one reading from
the start gets its last bytes only once the writer has verified the very file
read (``until_verified``). A writer that dies (crash, lost source) leaves the part
behind: the next one appends from where it ends, after hashing what is there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from migratio.checksums import file_chunks
from migratio.errors import IntegrityError, Stalled, TransientError
from migratio.group_files import try_making

# A follower at the end of what is written looks again this often: a few ms of
# latency per wait, against 1 GiB moved in ~5 s.
FOLLOW_POLL_SECONDS = 0.005
READ_CHUNK = 1024 * 1024

Read = Callable[[int], AbstractContextManager[Iterator[bytes]]]
Paced = Callable[[Iterable[bytes]], Iterable[bytes]]


def part_of(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def append_source(
    final: Path,
    size: int,
    sha512: str | None,
    read: Read,
    paced: Paced,
    what: str,
    stop: threading.Event | None = None,
) -> None:
    """Append the source to the part file from where it ends, verify the whole,
    and rename it to ``final``. The caller holds the file's lock.

    A part that fails verification is removed, so the next writer starts over."""
    if final.exists():
        return
    partial = part_of(final)
    partial.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha512()
    have = 0
    if partial.exists():
        for chunk in file_chunks(partial):
            digest.update(chunk)
            have += len(chunk)
    # Unbuffered: a follower sees each chunk as soon as it is written.
    with partial.open("ab", buffering=0) as out:
        if have < size:
            with read(have) as chunks:
                for chunk in paced(chunks):
                    if stop is not None and stop.is_set():
                        return
                    digest.update(chunk)
                    out.write(chunk)
                    have += len(chunk)
    if have != size or (sha512 and digest.hexdigest() != sha512):
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"{what}: the {have} bytes read do not match the recorded size or sha512; "
            "the group's spool is dropped"
        )
    partial.rename(final)


class Follower:
    """One member's reader of the group's spool; takes over writing it when no
    one does (``start_writer``), and then waits for that writer before it ends.

    final: the spool's final name. size: the source's size.
    start_writer: called with the lock's handle when this follower holds the lock
        and the spool is unfinished; runs the writer (``append_source``) to the end
        and releases the lock.
    stopping: polled while waiting (thread-safe): raises to stop (shutdown, lease lost).
    stall_seconds: how long the spool may stop growing before this follower gives up.
    """

    def __init__(
        self,
        final: Path,
        size: int,
        start_writer: Callable[[IO[str], threading.Event], threading.Thread],
        stopping: Callable[[], None],
        stall_seconds: float,
    ) -> None:
        self.final = final
        self.size = size
        self._start_writer = start_writer
        self._stopping = stopping
        self._stall_seconds = stall_seconds
        self.writer: threading.Thread | None = None
        self.writer_error: BaseException | None = None
        self._stop_writer = threading.Event()
        self._closed = threading.Event()
        self._saw_final = False

    def chunks(self, offset: int = 0, *, until_verified: bool = False) -> Iterator[bytes]:
        """The spool from ``offset`` as it is written; ``until_verified``: the
        last chunk is yielded only once the writer has verified the very file
        read (``_verified``), so a caller need not hash the bytes again."""
        position = offset
        handle: IO[bytes] | None = None
        quiet_since = time.monotonic()
        try:
            while position < self.size:
                if self._closed.is_set():
                    return
                if handle is None:
                    handle = _open_either(self.final)
                    if handle is not None:
                        handle.seek(position)
                chunk = handle.read(READ_CHUNK) if handle is not None else b""
                if not chunk:
                    self._at_end(position, quiet_since)
                    continue
                position += len(chunk)
                quiet_since = time.monotonic()
                if until_verified and position >= self.size and handle is not None:
                    self._verified(handle)
                yield chunk
        finally:
            if handle is not None:
                handle.close()

    def _verified(self, handle: IO[bytes]) -> None:
        """Return once the spool read through ``handle`` is final: its writer
        renames it only after checking the whole against the source's sha512. A
        spool dropped and written anew meanwhile is not the file read: read again."""
        quiet_since = time.monotonic()
        while not self.final.exists():
            self._at_end(self.size, quiet_since)
        read, final = os.fstat(handle.fileno()), self.final.stat()
        if (read.st_dev, read.st_ino) != (final.st_dev, final.st_ino):
            raise TransientError(
                f"group spool {self.final.name} was written anew while this reader "
                "read it; reading it again"
            )

    def _at_end(self, position: int, quiet_since: float) -> None:
        """At the end of what is written: wait for more, or write it."""
        self._stopping()
        if self.writer_error is not None:
            raise self.writer_error
        if self.writer is None or not self.writer.is_alive():
            handle = try_making(self.final)
            if handle is not None:
                if self.final.exists():
                    handle.close()
                    # Finished since this follower's last read: read again once
                    # before calling it short (a spool that was replaced, rarely).
                    if self._saw_final and position < self.size:
                        raise TransientError(
                            f"group spool {self.final.name} ended at {position} of "
                            f"{self.size} bytes for this reader; reading it again"
                        )
                    self._saw_final = True
                    return
                self.writer = self._start_writer(handle, self._stop_writer)
                return
        if time.monotonic() - quiet_since > self._stall_seconds:
            raise Stalled(
                f"the group's read of the source ({self.final.name}) has not grown for "
                f"{self._stall_seconds:g} s"
            )
        time.sleep(FOLLOW_POLL_SECONDS)

    def failed(self, error: BaseException) -> None:
        """From the writer thread: why it stopped before the end."""
        self.writer_error = error

    def close(self, between: Callable[[], None]) -> None:
        """Stop following; a writer this follower started goes on to the end
        (others may be reading it), waited for with ``between`` (a checkpoint)."""
        self._closed.set()
        writer = self.writer
        if writer is None:
            return
        try:
            while writer.is_alive():
                between()
                writer.join(0.1)
        except BaseException:
            self._stop_writer.set()  # shutdown or lease lost: the next writer resumes
            writer.join()
            raise


def _open_either(final: Path) -> IO[bytes] | None:
    """The spool, finished or not; the part's handle stays good across its rename."""
    for path in (part_of(final), final):
        try:
            return path.open("rb")
        except FileNotFoundError:
            continue
    return None
