"""A raw disk image as EBS sees it: 512 KiB blocks, most of them never written.

``scan`` walks a sparse raw file in block order and yields only blocks holding a
non-zero byte. Holes are found with SEEK_DATA/SEEK_HOLE and never read (on a
filesystem without hole support every block is read and zero blocks are
dropped after reading), so its cost follows the data, not the virtual size.
Given a hash, it also feeds it every byte of the file, holes as zeros: that is
a pass over the whole virtual size, done only to check a payload sha512 known
beforehand.

``scan_mapped`` finds the same blocks of the raw disk an image file describes
(``migratio.disk_map``) by reading its data runs in place: no raw copy needed.

``Manifest`` is the whole-image digest that costs only the data: SHA-512 over
the payload's size and the ordered list of (block index, SHA-256) of its
non-zero blocks -- the very SHA-256s that PutSnapshotBlock carries and EBS
checks. It is not the sha512 of the raw bytes, and is always named
``manifest`` where it is stored (the ``migratio_payload_manifest_sha512`` tag).
Exactly, with all integers big-endian::

    SHA512( b"migratio-ebs-manifest/1\n" || u64(size in bytes) || u32(BLOCK_SIZE)
            || for each block holding a non-zero byte, by increasing index:
               u64(index) || SHA256(the block, the last one zero-padded to BLOCK_SIZE) )

Why it is as strong as a sha512 of every byte, for what it is used for:

- It identifies the exact disk. The encoding is injective: a fixed-length
  header, then fixed-length 40-byte entries with strictly increasing indexes,
  so a manifest parses back into one size and one set of (index, SHA-256).
  A block absent from it is all zeros (EBS reads unwritten blocks as zeros);
  the size fixes where the disk ends and so the padding of the last block.
- So two different disks with the same digest need a collision: either their
  manifests differ and SHA-512 collides, or the manifests are equal and some
  block differs under an equal SHA-256 (a block that is zero in one disk and
  not in the other is listed in only one manifest). Forging one is as hard as
  breaking SHA-512 or SHA-256; an accidental match (a misread, a lost block, a
  block taken for a hole) has probability about 2^-256.
- What AWS holds is only ever checked by SHA-256: each block against its
  checksum on PutSnapshotBlock, all of them by CompleteSnapshot's LINEAR
  aggregate. A local sha512 of every byte proved nothing more about the
  snapshot than those checks do; the manifest is built from the same SHA-256s,
  so it ties the recorded digest to what EBS accepted, at no extra pass.

``BlockSet`` is the resume journal's record of blocks already sent: sorted
``[start, end)`` index ranges, small in JSON however many blocks there are.
"""

from __future__ import annotations

import base64
import bisect
import errno
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from migratio.disk_map import Extent
from migratio.drivers.aws.block_budget import BLOCKS_HELD
from migratio.drivers.aws.block_buffers import BlockBuffers

# EBS direct's block size. moto reports BlockSize 512 in its answers; AWS reports
# 524288 and accepts nothing else, so the size is fixed here, not read back.
BLOCK_SIZE = 512 * 1024
GIB = 1 << 30
# Buffers kept for the next blocks read: one comes back per block sent, and the
# reader takes one per block, so a few cover the steady state (more would only
# add to the daemon's peak memory).
KEPT_BUFFERS = 4
# The buffers blocks are read into, given back once sent (see block_buffers).
BUFFERS = BlockBuffers(BLOCK_SIZE, BLOCKS_HELD, keep=KEPT_BUFFERS)

_ZEROS = bytes(BLOCK_SIZE)
# Holes are hashed in large pieces: one update per 8 MiB instead of per block.
_ZERO_RUN = bytes(16 * BLOCK_SIZE)


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


@dataclass(frozen=True)
class Block:
    """One non-zero block, padded to BLOCK_SIZE, with its SHA256. ``data`` read by
    ``scan`` or ``scan_mapped`` is a buffer of ``BUFFERS``: whoever sends the
    block gives it back, after which it must not be read."""

    index: int
    data: bytes | bytearray
    sha256: bytes

    @property
    def checksum(self) -> str:
        """The base64 SHA256 that PutSnapshotBlock carries."""
        return base64.b64encode(self.sha256).decode("ascii")


def volume_size_gib(size: int) -> int:
    """EBS volumes come in whole GiB, at least one."""
    return max(1, -(-size // GIB))


def scan(fd: int, size: int, hasher: Hasher | None = None) -> Iterator[Block]:
    """The non-zero blocks of the first ``size`` bytes of ``fd``, in index order.

    ``hasher``, when given, receives every byte of the file in order, holes as
    zeros (a pass over the whole virtual size): a block wrongly taken for a hole
    would change the hash.
    """
    position = 0  # how far the file has been hashed; always a block boundary or size
    block = _Buffer()
    for start, end in data_extents(fd, size):
        first = max(start // BLOCK_SIZE, -(-position // BLOCK_SIZE))
        for index in range(first, -(-end // BLOCK_SIZE)):
            offset = index * BLOCK_SIZE
            length = min(BLOCK_SIZE, size - offset)
            block.read(fd, 0, length, offset)
            if hasher is not None:
                _hash_zeros(hasher, offset - position)
                hasher.update(block.view[:length])
            position = offset + length
            if found := block.nonzero(index):
                yield found
    if hasher is not None:
        _hash_zeros(hasher, size - position)


def scan_mapped(fd: int, extents: Iterable[Extent]) -> Iterator[Block]:
    """The non-zero blocks of a raw disk whose data lies at ``extents`` of ``fd``
    (a ``disk_map``: each run's bytes at its disk offset, zeros elsewhere), in
    index order: the blocks ``scan`` finds in the raw disk, read straight from
    the image file. A block a run ends in is filled by the next runs, if any."""
    index = -1
    block = _Buffer()
    for extent in extents:
        position, end = extent.start, extent.start + extent.length
        while position < end:
            if position // BLOCK_SIZE != index:
                if index >= 0 and (found := block.nonzero(index)):
                    yield found
                index = position // BLOCK_SIZE
            within = position - index * BLOCK_SIZE
            length = min(end - position, BLOCK_SIZE - within)
            block.read(fd, within, length, extent.offset + position - extent.start)
            position += length
    if index >= 0 and (found := block.nonzero(index)):
        yield found


class _Buffer:
    """The block being read, zeros until read into: its bytes from ``BUFFERS``,
    handed on whole in a ``Block`` when not all zeros, else zeroed again for the
    next block."""

    def __init__(self) -> None:
        self._take()

    def _take(self) -> None:
        self._bytes = BUFFERS.take()
        self.view = memoryview(self._bytes)

    def read(self, fd: int, within: int, length: int, offset: int) -> None:
        """``length`` bytes of ``fd`` at ``offset`` into the block at ``within``."""
        if os.preadv(fd, [self.view[within : within + length]], offset) != length:
            raise OSError(errno.EIO, f"short read at offset {offset}")

    def nonzero(self, index: int) -> Block | None:
        """The block as block ``index``, unless it is all zeros; either way the
        buffer is zeros again after."""
        if self._bytes == _ZEROS:
            return None
        data = self._bytes
        self._take()
        return Block(index, data, hashlib.sha256(data).digest())


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Byte ranges ``[start, end)`` that may hold data, per SEEK_DATA/SEEK_HOLE."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                return
            if exc.errno == errno.EINVAL:  # no hole support: all of it may be data
                yield offset, size
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def linear_checksum(digests: Iterable[bytes]) -> str:
    """CompleteSnapshot's LINEAR aggregate: SHA256 over the blocks' SHA256s in
    index order, base64."""
    total = LinearChecksum()
    for digest in digests:
        total.add(digest)
    return total.value()


class LinearChecksum:
    """``linear_checksum`` fed block by block, with the count of blocks: kept as
    a running hash, not a list (two million entries for a TiB of data)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, digest: bytes) -> None:
        self._hash.update(digest)
        self.count += 1

    def value(self) -> str:
        return base64.b64encode(self._hash.digest()).decode("ascii")


class Manifest:
    """The payload manifest digest (see the module docstring), fed block by block.

    size: the payload's size in bytes.
    """

    HEADER = b"migratio-ebs-manifest/1\n"

    def __init__(self, size: int) -> None:
        self._hash = hashlib.sha512(
            self.HEADER + size.to_bytes(8, "big") + BLOCK_SIZE.to_bytes(4, "big")
        )
        self._last = -1
        self.blocks = 0

    def add(self, index: int, sha256: bytes) -> None:
        """The next non-zero block; indexes must increase (the encoding relies on it)."""
        if index <= self._last or len(sha256) != 32:
            raise ValueError(f"manifest entry out of order or malformed: block {index}")
        self._hash.update(index.to_bytes(8, "big") + sha256)
        self._last = index
        self.blocks += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _hash_zeros(hasher: Hasher, count: int) -> None:
    while count > 0:
        piece = min(count, len(_ZERO_RUN))
        hasher.update(_ZERO_RUN[:piece] if piece < len(_ZERO_RUN) else _ZERO_RUN)
        count -= piece


class BlockSet:
    """A set of block indices kept as sorted, disjoint ``[start, end)`` ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        at = bisect.bisect_right(self._starts, index) - 1
        return at >= 0 and index < self._ends[at]

    def __len__(self) -> int:
        return sum(end - start for start, end in zip(self._starts, self._ends, strict=True))

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, end)

    def add(self, index: int) -> None:
        at = bisect.bisect_right(self._starts, index) - 1
        if at >= 0 and index < self._ends[at]:
            return
        joins_left = at >= 0 and self._ends[at] == index
        joins_right = at + 1 < len(self._starts) and self._starts[at + 1] == index + 1
        if joins_left and joins_right:
            self._ends[at] = self._ends[at + 1]
            del self._starts[at + 1], self._ends[at + 1]
        elif joins_left:
            self._ends[at] = index + 1
        elif joins_right:
            self._starts[at + 1] = index
        else:
            self._starts.insert(at + 1, index)
            self._ends.insert(at + 1, index + 1)

    def to_json(self) -> list[list[int]]:
        return [[start, end] for start, end in zip(self._starts, self._ends, strict=True)]

    @classmethod
    def from_json(cls, value: Any) -> BlockSet:
        """Ranges as ``to_json`` wrote them; anything malformed counts as nothing sent."""
        blocks = cls()
        if not isinstance(value, list):
            return blocks
        for item in value:
            if not (isinstance(item, list) and len(item) == 2):
                return cls()
            start, end = item
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
                return cls()
            if blocks._ends and start <= blocks._ends[-1]:
                return cls()
            blocks._starts.append(start)
            blocks._ends.append(end)
        return blocks
