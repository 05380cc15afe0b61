"""Block buffers used again: a block's buffer given back once it is sent is the
next block's, and the blocks read are the same as with a fresh buffer each."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

from migratio.disk_map import Extent
from migratio.drivers.aws.block_buffers import BlockBuffers
from migratio.drivers.aws.blocks import BLOCK_SIZE, BUFFERS, Block, scan, scan_mapped

SIZE = 64


def test_a_buffer_given_back_is_taken_again_as_zeros() -> None:
    buffers = BlockBuffers(SIZE, limit=2, keep=2)
    first = buffers.take()
    first[:] = b"\xff" * SIZE
    buffers.give(first)
    again = buffers.take()
    assert again is first and again == bytes(SIZE)
    assert buffers.take() is not first  # the list was empty again


def test_only_own_sized_buffers_up_to_the_limit_are_kept() -> None:
    buffers = BlockBuffers(SIZE, limit=3, keep=2)
    buffers.give(bytes(SIZE))  # a shared constant (the zero block) is never reused
    buffers.give(bytearray(SIZE + 1))
    assert len(buffers) == 0
    for _ in range(3):
        buffers.give(bytearray(SIZE))
    assert len(buffers) == 2
    buffers.drop()
    assert len(buffers) == 0
    buffers.give(bytearray(SIZE), in_use=4)  # not kept: it and three others in use, 4 > 3
    assert len(buffers) == 0
    buffers.give(bytearray(SIZE), in_use=3)  # it and two others: within the limit
    assert len(buffers) == 1


def _raw_disk(path: Path) -> dict[int, bytes]:
    """Blocks of data, of zeros and a short last block with data; the data blocks."""
    pieces = random.Random(5)
    blocks = [
        pieces.randbytes(BLOCK_SIZE),
        bytes(BLOCK_SIZE),
        pieces.randbytes(BLOCK_SIZE),
        bytes(BLOCK_SIZE // 2) + pieces.randbytes(BLOCK_SIZE // 2),
        pieces.randbytes(1000),
    ]
    path.write_bytes(b"".join(blocks))
    return {i: b.ljust(BLOCK_SIZE, b"\0") for i, b in enumerate(blocks) if any(b)}


def _given_back_one_by_one(blocks: Iterator[Block]) -> dict[int, bytes]:
    """Each block's bytes as a sender sees them, its buffer given back (to be
    read into again) before the next block is read."""
    seen = {}
    for block in blocks:
        assert hashlib.sha256(block.data).digest() == block.sha256
        seen[block.index] = bytes(block.data)
        BUFFERS.give(block.data)
    return seen


def _all_held(blocks: Iterator[Block]) -> dict[int, bytes]:
    """The blocks' bytes once all are read, none given back (none may share a buffer)."""
    return {block.index: bytes(block.data) for block in list(blocks)}


def test_blocks_read_into_reused_buffers_are_the_disk_blocks(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    expected = _raw_disk(path)
    size = path.stat().st_size
    whole = [Extent(0, size, 0)]
    split = [Extent(0, 700_000, 0), Extent(700_000, size - 700_000, 700_000)]
    with path.open("rb") as handle:
        fd = handle.fileno()
        for read in (_given_back_one_by_one, _all_held):
            assert read(scan(fd, size)) == expected
            assert read(scan_mapped(fd, whole)) == expected
            assert read(scan_mapped(fd, split)) == expected
    BUFFERS.drop()
