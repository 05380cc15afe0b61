"""Blocks read from a staged image through its disk map, against the raw disk qemu-img
converts the same image to: the same non-zero blocks, byte for byte, whatever the
image's layout (clusters out of disk order, zero clusters, a partial last block)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from migratio import disk_map
from migratio.drivers.aws.blocks import scan, scan_mapped
from tests.support import images

SIZE = images.OUT_OF_ORDER_SIZE


def _blocks_of_raw(raw: Path) -> list[tuple[int, bytes | bytearray]]:
    with raw.open("rb") as handle:
        return [(b.index, b.data) for b in scan(handle.fileno(), raw.stat().st_size)]


def _blocks_mapped(image: Path, mapped: disk_map.DiskMap) -> list[tuple[int, bytes | bytearray]]:
    with image.open("rb") as handle:
        return [(b.index, b.data) for b in scan_mapped(handle.fileno(), mapped.extents())]


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vpc", "raw"])
def test_mapped_blocks_are_the_converted_disk_blocks(tmp_path: Path, fmt: str) -> None:
    qcow2 = images.qcow2_out_of_order(tmp_path / "disk.qcow2")
    image = qcow2
    if fmt != "qcow2":
        image = tmp_path / f"disk.{fmt}"
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", fmt, str(qcow2), str(image)], check=True
        )
    mapped = disk_map.plan(image, fmt, tmp_path / "disk.map")
    assert mapped is not None
    raw = images.as_raw(image, tmp_path / "converted.raw", fmt)
    assert mapped.size == raw.stat().st_size
    expected = _blocks_of_raw(raw)
    assert [index for index, _ in expected] == [0, 1, 2, 5]
    assert _blocks_mapped(image, mapped) == expected
    # Saved, then read back by a new reader (a resumed upload): the same map.
    assert list(disk_map.DiskMap(tmp_path / "disk.map").extents()) == list(mapped.extents())


def test_out_of_order_clusters_are_read_from_their_own_offsets(tmp_path: Path) -> None:
    image = images.qcow2_out_of_order(tmp_path / "disk.qcow2")
    mapped = disk_map.plan(image, "qcow2", tmp_path / "disk.map")
    assert mapped is not None
    runs = list(mapped.extents())
    starts = [run.start for run in runs]
    assert starts == sorted(starts)
    offsets = [run.offset for run in runs]
    assert offsets != sorted(offsets)  # the point of this image
    assert mapped.data_bytes == sum(run.length for run in runs) < SIZE


def test_a_compressed_image_cannot_be_read_in_place(tmp_path: Path) -> None:
    raw = tmp_path / "text.raw"
    raw.write_bytes(b"compressible " * 100_000)
    image = tmp_path / "compressed.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
        check=True,
    )
    assert disk_map.plan(image, "qcow2", tmp_path / "disk.map") is None
    assert not (tmp_path / "disk.map").exists()


def test_a_cut_short_image_is_not_read_past_its_end(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    with image.open("wb") as handle:
        handle.truncate(SIZE)
        os.pwrite(handle.fileno(), os.urandom(4096), SIZE - 4096)
    mapped = disk_map.plan(image, "raw", tmp_path / "disk.map")
    assert mapped is not None
    os.truncate(image, SIZE - 2048)  # shrunk after it was mapped
    with image.open("rb") as handle, pytest.raises(OSError, match="short read"):
        list(scan_mapped(handle.fileno(), mapped.extents()))
