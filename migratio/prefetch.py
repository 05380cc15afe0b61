"""Read ahead in a thread, so that downloading and uploading overlap.

A single thread pulling a download generator from inside an upload alternates
between the two sockets. Handing the download to a reader thread lets both run
at once, as `curl | curl` does. hashlib and socket I/O release the GIL. A small
bounded queue keeps memory flat: at most ``depth`` chunks are in flight.

A download outruns the upload it feeds (Glance hashes what it receives), so the
queue is full nearly all the time and each chunk of its depth is resident for
every running transfer: at a depth of 8, four migrations held 32 MiB in their
queues. The kernel's socket buffers already absorb the jitter a deeper queue
would, so two are enough to keep both sockets busy (measured with four 1 GiB
OpenStack -> OpenStack migrations at once: bench/concurrency.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Final

log = logging.getLogger(__name__)

_END: Final = object()
DEPTH = 2
# How long the consumer waits, when it stops, for the reader to notice. A reader
# blocked in a source's socket ends once the stall watchdog cuts it; past this,
# the consumer goes on rather than hang with it (the thread is a daemon).
JOIN_SECONDS = 30.0


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(chunks: Iterable[bytes], depth: int = DEPTH) -> Iterator[bytes]:
    """Yield ``chunks`` unchanged, produced ahead by a reader thread.

    An error raised by the producer is re-raised here, in the consumer; when the
    consumer stops early, the producer stops at its next chunk.
    """
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if not _put(buffer, chunk, stop) or stop.is_set():
                    return
            _put(buffer, _END, stop)
        except BaseException as error:  # handed to the consumer, which decides
            _put(buffer, _Failure(error), stop)

    reader = threading.Thread(target=produce, name="prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        _drain(buffer)  # a reader blocked on a full queue returns at once
        reader.join(JOIN_SECONDS)
        if reader.is_alive():
            log.warning(
                "prefetch reader still blocked %.0f s after its consumer stopped", JOIN_SECONDS
            )


def _put(buffer: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            buffer.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(buffer: queue.Queue[object]) -> None:
    while True:
        try:
            buffer.get_nowait()
        except queue.Empty:
            return
