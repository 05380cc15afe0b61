"""The ebs-direct payload manifest: what it is, and that it costs only the data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migratio.drivers.aws.blocks import BLOCK_SIZE, Manifest, scan
from tests.drivers.aws.manifest_spec import manifest_of_raw, manifest_sha512

GIB = 1 << 30


def _manifest_by_scan(path: Path) -> str:
    size = path.stat().st_size
    manifest = Manifest(size)
    with path.open("rb") as handle:
        for block in scan(handle.fileno(), size):
            manifest.add(block.index, block.sha256)
    return manifest.hexdigest()


def _disk(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in writes.items():
            os.pwrite(handle.fileno(), data, offset)
    return path


def test_manifest_equals_the_specification_computed_from_the_bytes(tmp_path: Path) -> None:
    size = 6 * BLOCK_SIZE + 999
    disk = _disk(
        tmp_path / "d.raw",
        size,
        {0: os.urandom(10), 2 * BLOCK_SIZE - 5: os.urandom(20), 3 * BLOCK_SIZE: bytes(BLOCK_SIZE),
         size - 7: os.urandom(7)},
    )  # fmt: skip
    assert _manifest_by_scan(disk) == manifest_of_raw(disk)


def test_manifest_tells_apart_disks_a_raw_sha512_tells_apart(tmp_path: Path) -> None:
    base = {BLOCK_SIZE + 3: b"\x01\x02\x03"}
    size = 4 * BLOCK_SIZE
    reference = _manifest_by_scan(_disk(tmp_path / "a.raw", size, base))
    variants = {
        "a byte changed": (size, {BLOCK_SIZE + 3: b"\x01\x02\x04"}),
        "the same bytes in another block": (size, {2 * BLOCK_SIZE + 3: b"\x01\x02\x03"}),
        "one more block of data": (size, {**base, 0: b"\x09"}),
        "one zero byte longer": (size + 1, base),
        "one zero block longer": (size + BLOCK_SIZE, base),
    }
    seen = {reference}
    for name, (variant_size, writes) in variants.items():
        digest = _manifest_by_scan(_disk(tmp_path / f"{len(seen)}.raw", variant_size, writes))
        assert digest not in seen, name
        seen.add(digest)
    # Zeros written as data are a hole to the manifest, as they are to EBS.
    written_zeros = _disk(tmp_path / "z.raw", size, {**base, 0: bytes(BLOCK_SIZE)})
    assert _manifest_by_scan(written_zeros) == reference


def test_manifest_refuses_blocks_out_of_order() -> None:
    manifest = Manifest(4 * BLOCK_SIZE)
    manifest.add(2, bytes(32))
    for index in (2, 1):
        with pytest.raises(ValueError, match="out of order"):
            manifest.add(index, bytes(32))
    with pytest.raises(ValueError, match="malformed"):
        manifest.add(3, bytes(31))


def test_an_empty_disk_has_the_manifest_of_its_size_alone(tmp_path: Path) -> None:
    disk = _disk(tmp_path / "e.raw", 2 * GIB, {})
    assert _manifest_by_scan(disk) == manifest_sha512(2 * GIB, {})


def test_manifest_of_a_64_gib_disk_reads_only_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cost follows the data: counted in bytes read, not in seconds."""
    size = 64 * GIB
    data_blocks = (0, 5, 70_000, size // BLOCK_SIZE - 1)
    disk = _disk(tmp_path / "big.raw", size, {i * BLOCK_SIZE + 1: b"\xff" for i in data_blocks})
    read: list[int] = []
    pread = os.pread

    def counting_pread(fd: int, length: int, offset: int) -> bytes:
        read.append(length)
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counting_pread)  # as blocks.py calls it
    digest = _manifest_by_scan(disk)
    monkeypatch.undo()
    if sum(read) >= size:
        pytest.skip("this filesystem does not report holes (SEEK_DATA)")
    # Filesystems allocate in their own extents: allow a block either side of each write.
    assert sum(read) <= 3 * len(data_blocks) * BLOCK_SIZE
    assert digest == manifest_of_raw(
        disk, [(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE) for i in data_blocks]
    )
