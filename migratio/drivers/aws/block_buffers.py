"""Block-sized buffers used again and again instead of one new buffer per block.

The daemon has every allocation of 256 KiB or more mapped fresh and unmapped on
free (``migratio.memory``), so a new 512 KiB buffer per block costs its page
faults each time: ~0.3 ms a block here, most of a block scan's CPU, held under
the GIL. A block's buffer comes back once the block has been sent
(``SnapshotWriter``), and the next block read takes it. The daemon's list
(``blocks.BUFFERS``) keeps at most its block budget, and none once no writer
is sending, so an idle daemon keeps none.
"""

from __future__ import annotations

from collections import deque


class BlockBuffers:
    """A free list of ``size``-byte buffers, at most ``limit`` (deque appends and
    pops are atomic: no lock)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self._zeros = bytes(size)
        self._free: deque[bytearray] = deque(maxlen=limit)

    def take(self) -> bytearray:
        """A buffer of zeros, one given back if any."""
        try:
            buffer = self._free.pop()
        except IndexError:
            return bytearray(self.size)
        memoryview(buffer)[:] = self._zeros
        return buffer

    def give(self, data: bytes | bytearray) -> None:
        """``data`` is no longer read by anyone; a buffer (not a shared constant
        such as the zero block, which is bytes) goes back on the list."""
        if isinstance(data, bytearray) and len(data) == self.size:
            self._free.append(data)

    def drop(self) -> None:
        self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
