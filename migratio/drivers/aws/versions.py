"""Incremental versions: a new snapshot starts from the previous version's and
takes only the blocks that differ.

A template's new version is mostly the old one. EBS direct lets a snapshot
start from a parent (``StartSnapshot(ParentSnapshotId)``): every block the new
one is not sent reads as the parent's. So the writer compares each non-zero
block of the new version with the parent's block at the same index, by SHA-256,
and sends only what differs; a block the parent holds and the new version no
longer does (it became zero) is written as zeros, since it would otherwise
read as the parent's.

What the parent held is its ``BlockMap`` (index -> SHA-256 of every non-zero
block, with the payload size), kept in the ledger when it was migrated, packed
as 36 bytes per block (~18 KiB for 256 MiB of data); never read back from AWS,
which would mean reading every block of the parent. The child's manifest
digest still covers every one of its blocks: those not sent by the parent's
SHA-256s, which EBS checked when the parent was written.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from migratio.drivers.aws.blocks import BLOCK_SIZE, Block

_MAGIC = b"MBM1"
_HEADER = struct.Struct(">4sQI")  # magic, payload size, block size
_ENTRY = struct.Struct(">I32s")  # block index (EBS volumes stop at 2^27 blocks), SHA-256
_ZEROS = bytes(BLOCK_SIZE)
ZERO_BLOCK_SHA256 = hashlib.sha256(_ZEROS).digest()


@dataclass(frozen=True)
class BlockMap:
    """Every non-zero block of one payload, by index, and the payload's size."""

    size: int
    blocks: Mapping[int, bytes]

    def pack(self) -> bytes:
        entries = b"".join(_ENTRY.pack(i, self.blocks[i]) for i in sorted(self.blocks))
        return _HEADER.pack(_MAGIC, self.size, BLOCK_SIZE) + entries

    @classmethod
    def unpack(cls, packed: bytes) -> BlockMap:
        """ValueError when ``packed`` is not what ``pack`` wrote."""
        if len(packed) < _HEADER.size or (len(packed) - _HEADER.size) % _ENTRY.size:
            raise ValueError(f"not a block map: {len(packed)} bytes")
        magic, size, block_size = _HEADER.unpack_from(packed)
        if magic != _MAGIC or block_size != BLOCK_SIZE:
            raise ValueError("not a block map of 512 KiB blocks")
        blocks = dict(_ENTRY.iter_unpack(packed[_HEADER.size :]))
        return cls(size, blocks)


class Kind(StrEnum):
    """What happened to a block since the parent."""

    ADDED = "added"  # zero (or absent) in the parent, data now
    CHANGED = "changed"  # data in both, different
    UNCHANGED = "unchanged"  # the same data: not sent
    ZEROED = "zeroed"  # data in the parent, zero now: written as zeros


@dataclass(frozen=True)
class Planned:
    """One block of the new snapshot and whether it is sent."""

    block: Block
    kind: Kind

    @property
    def send(self) -> bool:
        return self.kind is not Kind.UNCHANGED

    @property
    def holds_data(self) -> bool:
        """Part of the new version's own manifest (a zeroed block is not)."""
        return self.kind is not Kind.ZEROED


def plan(blocks: Iterable[Block], parent: BlockMap | None) -> Iterator[Planned]:
    """The new version's non-zero ``blocks`` (in increasing index order), compared
    with ``parent``'s, with the parent's blocks that became zero merged in, all
    in increasing index order (CompleteSnapshot's aggregate follows it). Without
    a parent every block is added."""
    if parent is None:
        for block in blocks:
            yield Planned(block, Kind.ADDED)
        return
    zeroed = iter(sorted(parent.blocks))
    pending = next(zeroed, None)
    for block in blocks:
        while pending is not None and pending < block.index:
            yield _zeroed(pending)
            pending = next(zeroed, None)
        if pending == block.index:
            pending = next(zeroed, None)
        before = parent.blocks.get(block.index)
        if before is None:
            yield Planned(block, Kind.ADDED)
        elif before == block.sha256:
            yield Planned(block, Kind.UNCHANGED)
        else:
            yield Planned(block, Kind.CHANGED)
    while pending is not None:
        yield _zeroed(pending)
        pending = next(zeroed, None)


def _zeroed(index: int) -> Planned:
    return Planned(Block(index, _ZEROS, ZERO_BLOCK_SHA256), Kind.ZEROED)
