"""Which blocks a new version sends, given its parent's block map (versions.plan)."""

from __future__ import annotations

import hashlib

import pytest

from migratio.drivers.aws.blocks import BLOCK_SIZE, Block
from migratio.drivers.aws.versions import ZERO_BLOCK_SHA256, BlockMap, Kind, plan


def _block(index: int, fill: int) -> Block:
    data = bytes([fill]) * BLOCK_SIZE
    return Block(index, data, hashlib.sha256(data).digest())


def test_changed_zeroed_added_and_unchanged_blocks_in_index_order() -> None:
    old = [_block(0, 1), _block(2, 2), _block(3, 3), _block(7, 4), _block(9, 5)]
    parent = BlockMap(10 * BLOCK_SIZE, {b.index: b.sha256 for b in old})
    new = [_block(0, 1), _block(3, 33), _block(5, 6), _block(9, 5), _block(12, 7)]

    planned = list(plan(new, parent))

    assert [(p.block.index, p.kind) for p in planned] == [
        (0, Kind.UNCHANGED),
        (2, Kind.ZEROED),
        (3, Kind.CHANGED),
        (5, Kind.ADDED),
        (7, Kind.ZEROED),
        (9, Kind.UNCHANGED),
        (12, Kind.ADDED),
    ]
    sent = [p.block for p in planned if p.send]
    assert [b.index for b in sent] == [2, 3, 5, 7, 12]
    zeroed = [p.block for p in planned if p.kind is Kind.ZEROED]
    assert all(b.data == bytes(BLOCK_SIZE) and b.sha256 == ZERO_BLOCK_SHA256 for b in zeroed)
    # The new version's own manifest: its data blocks, never the zero writes.
    assert [p.block.index for p in planned if p.holds_data] == [0, 3, 5, 9, 12]


def test_zeroed_blocks_after_the_last_new_one_and_an_empty_new_version() -> None:
    parent = BlockMap(8 * BLOCK_SIZE, {4: b"a" * 32, 6: b"b" * 32})
    assert [(p.block.index, p.kind) for p in plan([_block(1, 9)], parent)] == [
        (1, Kind.ADDED),
        (4, Kind.ZEROED),
        (6, Kind.ZEROED),
    ]
    assert [p.kind for p in plan([], parent)] == [Kind.ZEROED, Kind.ZEROED]


def test_without_a_parent_every_block_is_added() -> None:
    blocks = [_block(i, i + 1) for i in (0, 5, 6)]
    assert [(p.block, p.kind) for p in plan(blocks, None)] == [(b, Kind.ADDED) for b in blocks]


def test_block_map_packs_36_bytes_a_block_and_refuses_anything_else() -> None:
    blocks = {i * 3: hashlib.sha256(str(i).encode()).digest() for i in range(500)}
    packed = BlockMap(3 << 30, blocks).pack()
    assert len(packed) == 16 + 36 * 500
    assert BlockMap.unpack(packed) == BlockMap(3 << 30, blocks)
    for bad in (b"", packed[:-1], b"XXXX" + packed[4:]):
        with pytest.raises(ValueError):
            BlockMap.unpack(bad)
