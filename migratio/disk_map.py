"""Where a disk's data lies inside an image file, so a raw disk can be read in place.

A destination that takes a raw disk block by block (ebs-direct) does not need
the raw file itself, only its non-zero bytes. For an uncompressed, unencrypted
image (qcow2 as Glance mostly holds, and most other formats), ``qemu-img map``
lists each run of guest data with its ``offset`` in the file: the raw disk is
those runs' bytes at their guest offsets and zeros everywhere else. Reading
them with pread from the staged image replaces the conversion: no raw copy on
disk (the work dir holds about the data once, not twice) and no pass that
writes it before the first block can leave.

An image with a data run that has no offset (compressed clusters, encryption)
or that points past the end of the file cannot be read this way; ``plan``
says so (None) and the caller converts it as before.

The map is saved in the work dir (24 bytes a run, after a header) so a resumed
upload reads the same one, and read back run by run, so the daemon never holds
a long list however fragmented the image is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from migratio import qemu

_MAGIC = b"migratio-disk-map/1\n"
_HEADER = struct.Struct(">QQ")  # disk size, data bytes
_EXTENT = struct.Struct(">QQQ")  # start in the disk, length, offset in the file
_BATCH = 4096  # runs read back at once


@dataclass(frozen=True)
class Extent:
    """``length`` bytes of the disk from ``start`` on, held at ``offset`` of the file."""

    start: int
    length: int
    offset: int


class DataRuns(Protocol):
    """A raw disk as its size and data runs: a saved ``DiskMap``, or one still
    being read from an image as it downloads (``following.FollowedImage``)."""

    size: int

    def extents(self) -> Iterator[Extent]: ...


class DiskMap:
    """A saved map: the raw disk's size and its data runs, in disk order.

    path: the map file ``plan`` wrote.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            magic = handle.read(len(_MAGIC))
            header = handle.read(_HEADER.size)
        if magic != _MAGIC or len(header) != _HEADER.size:
            raise ValueError(f"{path.name} is not a disk map")
        self.size, self.data_bytes = _HEADER.unpack(header)

    def extents(self) -> Iterator[Extent]:
        """The data runs, in increasing disk order, read from the file as needed."""
        with self.path.open("rb") as handle:
            handle.seek(len(_MAGIC) + _HEADER.size)
            while batch := handle.read(_EXTENT.size * _BATCH):
                for start, length, offset in _EXTENT.iter_unpack(batch):
                    yield Extent(start, length, offset)


def plan(image: Path, fmt: str, saved: Path) -> DiskMap | None:
    """Map ``image`` (format ``fmt``, passed by ``safety.check_file``) into ``saved``;
    None when some data of it cannot be read in place (convert it instead).

    The same checks as ``qemu.convert`` come first: nothing pointing at other
    files, no metadata past the file's end.
    """
    described = qemu.info(image, fmt)
    qemu.check_info_safe(described)
    qemu.check_consistent(image, fmt)
    size = described.get("virtual-size")
    if not isinstance(size, int):
        return None
    extents = _data_runs(qemu.extents(image, fmt), size, image.stat().st_size)
    if extents is None:
        return None
    write(saved, size, extents)
    return DiskMap(saved)


def write(saved: Path, size: int, extents: Iterable[Extent]) -> None:
    """Save a map; it appears under its name only once complete and on disk."""
    partial = saved.with_name(f".{saved.name}.part")
    runs = list(extents)
    with partial.open("wb") as out:
        out.write(_MAGIC + _HEADER.pack(size, sum(run.length for run in runs)))
        for run in runs:
            out.write(_EXTENT.pack(run.start, run.length, run.offset))
        out.flush()
        os.fsync(out.fileno())
    partial.replace(saved)


def _data_runs(listed: list[dict[str, Any]], size: int, file_size: int) -> list[Extent] | None:
    """The runs holding data, adjacent ones merged; None if one cannot be read in place."""
    runs: list[Extent] = []
    end = 0
    for entry in listed:
        start, length = int(entry["start"]), int(entry["length"])
        if start < end or start + length > size:
            return None  # not the ordered, disjoint list qemu prints
        end = start + length
        if not entry.get("data") or entry.get("zero"):
            continue  # reads as zeros: nothing to send
        offset = entry.get("offset")
        if not isinstance(offset, int) or offset < 0 or offset + length > file_size:
            return None  # compressed, encrypted or cut short
        last = runs[-1] if runs else None
        if last and last.start + last.length == start and last.offset + last.length == offset:
            runs[-1] = Extent(last.start, last.length + length, last.offset)
        else:
            runs.append(Extent(start, length, offset))
    return runs
