"""The payload manifest digest computed from a disk's bytes, independently of
migratio's code: written from the specification in ``blocks.py``'s docstring,
so a test can compare what migratio reports with it."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

BLOCK = 512 * 1024


def manifest_sha512(size: int, blocks: Mapping[int, bytes]) -> str:
    """SHA-512 over the header, then (index, SHA-256) of each block holding a
    non-zero byte, by index; ``blocks`` may hold zero blocks too (skipped)."""
    digest = hashlib.sha512(b"migratio-ebs-manifest/1\n" + struct.pack(">QI", size, BLOCK))
    for index in sorted(blocks):
        data = blocks[index].ljust(BLOCK, b"\0")
        assert len(data) == BLOCK
        if data.count(0) == BLOCK:
            continue
        digest.update(struct.pack(">Q", index) + hashlib.sha256(data).digest())
    return digest.hexdigest()


def manifest_of_raw(raw: Path, ranges: Iterable[tuple[int, int]] | None = None) -> str:
    """The manifest of a raw disk file, reading every block, or only the blocks
    that meet ``ranges`` (byte ranges known to hold all the data)."""
    size = raw.stat().st_size
    indexes: Iterable[int]
    if ranges is None:
        indexes = range(-(-size // BLOCK))
    else:
        indexes = sorted(
            {i for start, end in ranges for i in range(start // BLOCK, -(-end // BLOCK))}
        )
    blocks = {}
    with raw.open("rb") as handle:
        for index in indexes:
            handle.seek(index * BLOCK)
            blocks[index] = handle.read(BLOCK)
    return manifest_sha512(size, blocks)


def qcow2_data_ranges(qcow2: Path) -> list[tuple[int, int]]:
    """Where a qcow2 holds data, by ``qemu-img map`` (not SEEK_DATA, as migratio does)."""
    mapped = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(qcow2)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return [(e["start"], e["start"] + e["length"]) for e in json.loads(mapped) if e["data"]]
