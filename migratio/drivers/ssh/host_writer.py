"""The program ``ssh`` runs on an SSH site's host to stage an upload: it writes its
stdin to the file PATH from byte OFFSET (after checking the file holds that much)
and prints the file's size and its sha512 from byte 0, as one JSON line.

``stream.StreamedUpload`` sends this file's text as ``python3 -I -c TEXT PATH
OFFSET``: argv and stdin are its only inputs, and it imports nothing of migratio.
It runs on the Python 3 (3.8 or later) that the host's ``openstack`` CLI needs.

Why it is shaped so (``bench/ssh_vs_scp.py`` measures it against ``scp``):
- Whole 1 MiB buffers go to the file with O_DIRECT where the file system takes
  it, so the upload bypasses the host's page cache. Filling fresh cache pages
  was the host's largest CPU cost (more than the sha512), and a staged image is
  written once and read once, by the registering step, so the cache bought nothing.
- The sha512 is of the buffers as they were written, hashed in a thread: no
  second read of the file. The buffers are a fixed set, reused.
- A resumed upload's first OFFSET bytes are read back from the file, and so is
  any buffer the stream took back while the hasher was still reading: a long
  resumed prefix never holds up the stream.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import sys
import threading
from typing import NoReturn

BUFFER = 1 << 20
BUFFERS = 8
# O_DIRECT wants the file position and the length aligned to the device's
# logical block; 4 KiB covers every common device.
ALIGN = 4096
F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe means fewer, larger copies
# Exit statuses; REFUSED tells StreamedUpload that retrying cannot help.
REFUSED = 13
FAILED = 2
SHORT = 3


def fail(path: str, exc: OSError) -> NoReturn:
    sys.stderr.write(f"cannot write {path}: {exc.strerror or exc}\n")
    sys.exit(REFUSED if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else FAILED)


def open_at(path: str, offset: int) -> int:
    """The file, cut to ``offset`` bytes, positioned there; created (mode 0600) from 0."""
    flags = os.O_RDWR if offset else os.O_RDWR | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    if not offset:
        os.fchmod(fd, 0o600)
    if os.fstat(fd).st_size < offset:
        sys.stderr.write(f"{path} is shorter than {offset} bytes\n")
        sys.exit(SHORT)
    os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return fd


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off; False where the file system does not take it."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct if on else flags & ~direct)
    except OSError:
        return False
    return on


def write_all(fd: int, view: memoryview, direct: bool) -> bool:
    """Write ``view`` at the file's position; return whether O_DIRECT is still on
    (it is dropped where the device refuses an aligned write)."""
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            if not (direct and exc.errno == errno.EINVAL):
                raise
            direct = set_direct(fd, False)
    return direct


def fill(stdin: int, view: memoryview) -> int:
    """Read stdin until the buffer is full or the stream ends."""
    filled = 0
    while filled < len(view):
        got = os.readv(stdin, [view[filled:]])
        if not got:
            break
        filled += got
    return filled


class Staging:
    """The buffers shared by the stream (fills a buffer, writes it, hands it on)
    and the hasher (hashes in file order: a handed buffer, or the file itself
    where no buffer holds the next bytes)."""

    def __init__(self, offset: int) -> None:
        self.lock = threading.Condition()
        self.free = [memoryview(mmap.mmap(-1, BUFFER)) for _ in range(BUFFERS)]
        self.handed: collections.deque[tuple[int, memoryview, int]] = collections.deque()
        self.written = offset
        self.ended = False
        # The hasher reads back from the file (or has stopped): the stream takes
        # back a handed buffer rather than wait for it.
        self.reading = True
        self.digest = hashlib.sha512()
        self.hashed = 0
        self.error: OSError | None = None

    def take(self) -> memoryview:
        with self.lock:
            while not self.free:
                if self.handed and self.reading:
                    self.free.append(self.handed.popleft()[1])
                else:
                    self.lock.wait()
            return self.free.pop()

    def hand(self, position: int, view: memoryview, length: int) -> None:
        with self.lock:
            if length:
                self.handed.append((position, view, length))
            self.written = position + length
            self.ended = length < BUFFER
            self.lock.notify_all()
        if not length:
            self._give_back(view)

    def _give_back(self, view: memoryview) -> None:
        with self.lock:
            self.free.append(view)
            self.lock.notify_all()

    def hash_all(self, reader: int) -> None:
        spare = memoryview(mmap.mmap(-1, BUFFER))
        done = 0
        try:
            while True:
                view, end = self._next(done)
                if view is not None:
                    self.digest.update(view[: end - done])
                    self._give_back(view)
                elif end > done:
                    got = os.preadv(reader, [spare[: min(BUFFER, end - done)]], done)
                    if not got:
                        raise OSError(errno.EIO, "the file shrank while it was hashed")
                    self.digest.update(spare[:got])
                    end = done + got
                else:
                    break
                done = end
        except OSError as exc:
            self.error = exc
        finally:
            with self.lock:
                self.hashed = done
                self.reading = True
                self.lock.notify_all()

    def _next(self, done: int) -> tuple[memoryview | None, int]:
        """The hasher's next bytes, from ``done`` to the returned end: in a handed
        buffer, or (None) in the file; an end of ``done`` means all are hashed."""
        with self.lock:
            while done >= self.written and not self.ended:
                self.lock.wait()
            first = self.handed[0] if self.handed else None
            self.reading = first is None or first[0] != done
            if first is None:
                return None, self.written
            if self.reading:
                return None, first[0]
            self.handed.popleft()
            return first[1], done + first[2]


def main() -> None:
    path, offset = sys.argv[1], int(sys.argv[2])
    try:
        fd = open_at(path, offset)
        reader = os.open(path, os.O_RDONLY)
    except OSError as exc:
        fail(path, exc)
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(0, F_SETPIPE_SZ, BUFFER)
    staging = Staging(offset)
    hasher = threading.Thread(target=staging.hash_all, args=(reader,), daemon=True)
    hasher.start()
    position = offset
    direct = offset % ALIGN == 0 and set_direct(fd, True)
    try:
        while True:
            view = staging.take()
            filled = fill(0, view)
            if filled < BUFFER and direct:
                direct = set_direct(fd, False)  # the tail: not whole blocks
            direct = write_all(fd, view[:filled], direct)
            staging.hand(position, view, filled)
            position += filled
            if filled < BUFFER:
                break
    except OSError as exc:
        fail(path, exc)
    hasher.join()
    if staging.error is not None:
        fail(path, staging.error)
    answer = {"size": os.fstat(fd).st_size, "hashed": staging.hashed}
    print(json.dumps({**answer, "sha512": staging.digest.hexdigest()}))


if __name__ == "__main__":
    main()
