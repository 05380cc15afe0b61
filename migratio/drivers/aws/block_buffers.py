"""Block-sized buffers used again and again instead of one new buffer per block.

The daemon has every allocation of 256 KiB or more mapped fresh and unmapped on
free (``migratio.memory``), so a new 512 KiB buffer per block costs its page
faults each time: ~0.3 ms a block here, most of a block scan's CPU, held under
the GIL. A block's buffer comes back once the block has been sent
(``SnapshotWriter``), and the next block read takes it. The daemon's list
(``blocks.BUFFERS``) keeps a few, and only while the blocks in flight and the
kept ones together stay within the daemon's block budget, and none once no
writer is sending.
"""

from __future__ import annotations

from collections import deque


class BlockBuffers:
    """A free list of at most ``keep`` ``size``-byte buffers, and at most ``limit``
    with those in use (deque appends and pops are atomic: no lock; the limit is
    kept loosely)."""

    def __init__(self, size: int, limit: int, keep: int) -> None:
        self.size, self.limit = size, limit
        self._zeros = bytes(size)
        self._free: deque[bytearray] = deque(maxlen=keep)

    def take(self) -> bytearray:
        """A buffer of zeros, one given back if any."""
        try:
            buffer = self._free.pop()
        except IndexError:
            return bytearray(self.size)
        memoryview(buffer)[:] = self._zeros
        return buffer

    def give(self, data: bytes | bytearray, in_use: int = 0) -> None:
        """``data`` is no longer read by anyone; a buffer (not a shared constant
        such as the zero block, which is bytes) goes back on the list if it and
        ``in_use`` buffers (``data`` among them) stay within the limit."""
        kept = len(self._free)
        if isinstance(data, bytearray) and len(data) == self.size and kept + in_use <= self.limit:
            self._free.append(data)

    def drop(self) -> None:
        self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
