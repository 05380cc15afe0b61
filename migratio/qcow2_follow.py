"""The data runs of a qcow2 image read while it is still arriving, in guest order.

``qemu-img map`` needs the whole file. To send blocks while a qcow2 is still
being downloaded, its tables are read here as they land: the header, the L1
table, then each L2 table and the clusters it maps. ``qemu-img convert``
(and Nova's snapshots) write every table before the clusters it maps and
the clusters in guest order, so each run can be handed on soon after it has
arrived; an image laid out otherwise is still read correctly, only later
(a run is handed on once its bytes are there, whatever the order).

Only the plain layout is followed: version 2 or 3, no backing file, no
encryption, no incompatible feature (dirty, corrupt, external data file,
compression type, extended L2) and no compressed cluster. Anything else
raises ``NotFollowable`` and the caller reads the finished file as before.
What is read here is checked afterwards against ``qemu-img map`` of the
finished file (``following``), so a misreading cannot pass silently.

``read(offset, length)`` returns those bytes of the file once they have
arrived, waiting as needed; fewer bytes mean the file ends sooner.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from migratio.disk_map import Extent

MAGIC = b"QFI\xfb"
# magic, version, backing offset, backing size, cluster bits, size, crypt method,
# l1 size, l1 offset (the fields up to 48 bytes, the same in versions 2 and 3)
_HEADER = struct.Struct(">4sIQIIQII Q")
_INCOMPATIBLE = struct.Struct(">Q")  # version 3, at byte 72
_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55: a table's or cluster's offset
_COMPRESSED = 1 << 62
_ZERO = 1  # an L2 entry's "reads as zeros" flag (version 3)
# Larger than any header qemu writes with its extensions' start (104 bytes).
HEAD_BYTES = 112

Reader = Callable[[int, int], bytes]


class NotFollowable(Exception):
    """The image cannot be followed as it arrives (read it once complete instead)."""


@dataclass(frozen=True)
class Layout:
    """What a qcow2 header says about where its data lies."""

    size: int  # the guest disk's size in bytes
    cluster_bits: int
    l1_size: int
    l1_offset: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8


def layout(head: bytes) -> Layout:
    """The layout the first bytes of a qcow2 describe; NotFollowable for any
    feature this module does not follow (see the module docstring)."""
    if len(head) < 104 or head[:4] != MAGIC:
        raise NotFollowable("not a qcow2 header")
    (_, version, backing, _, cluster_bits, size, crypt, l1_size, l1_offset) = _HEADER.unpack_from(
        head
    )
    if version not in (2, 3):
        raise NotFollowable(f"qcow2 version {version}")
    if backing:
        raise NotFollowable("qcow2 with a backing file")
    if crypt:
        raise NotFollowable("encrypted qcow2")
    if not 9 <= cluster_bits <= 21:
        raise NotFollowable(f"qcow2 cluster bits {cluster_bits}")
    if version == 3 and _INCOMPATIBLE.unpack_from(head, 72)[0]:
        raise NotFollowable("qcow2 with incompatible features")
    found = Layout(size, cluster_bits, l1_size, l1_offset)
    needed = -(-size // (found.cluster_size * found.l2_entries))
    if l1_size < needed or l1_offset % found.cluster_size:
        raise NotFollowable("qcow2 L1 table too small or misaligned")
    return found


def runs(read: Reader) -> Iterator[Extent]:
    """Every allocated cluster of the image as an ``Extent``, in guest order,
    each once its bytes have arrived (not merged: a run is handed on at once)."""
    found = layout(read(0, HEAD_BYTES))
    cluster = found.cluster_size
    per_table = found.l2_entries
    tables = -(-found.size // (cluster * per_table))
    l1 = _table(read, found.l1_offset, tables)
    for table_index, l1_entry in enumerate(l1):
        table_offset = l1_entry & _OFFSET_MASK
        if not table_offset:
            continue  # no L2 table: all of it reads as zeros (there is no backing file)
        if table_offset % cluster:
            raise NotFollowable(f"misaligned L2 table at {table_offset}")
        first = table_index * per_table * cluster
        entries = min(per_table, -(-(found.size - first) // cluster))
        for entry_index, entry in enumerate(_table(read, table_offset, entries)):
            if entry & _COMPRESSED:
                raise NotFollowable("compressed clusters")
            offset = entry & _OFFSET_MASK
            if not offset or entry & _ZERO:
                continue
            if offset % cluster:
                raise NotFollowable(f"misaligned cluster at {offset}")
            start = first + entry_index * cluster
            length = min(cluster, found.size - start)
            if len(read(offset + length - 1, 1)) != 1:  # waits for the cluster's last byte
                raise NotFollowable(f"cluster at {offset} past the end of the file")
            yield Extent(start, length, offset)


def _table(read: Reader, offset: int, entries: int) -> tuple[int, ...]:
    data = read(offset, entries * 8)
    if len(data) != entries * 8:
        raise NotFollowable(f"table at {offset} past the end of the file")
    return struct.unpack(f">{entries}Q", data)
