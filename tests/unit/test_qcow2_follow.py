"""Reading a qcow2's data runs from its tables while it arrives (``qcow2_follow``):
the same runs ``qemu-img map`` finds in the finished file, each handed on once its
bytes are there, and anything but the plain layout refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from migratio import disk_map
from migratio.disk_map import Extent
from migratio.qcow2_follow import HEAD_BYTES, NotFollowable, layout, runs
from tests.support.engine import KIB, MIB, payload


def _qcow2(tmp_path: Path, disk: bytes, *options: str, compressed: bool = False) -> Path:
    raw, image = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    raw.write_bytes(disk)
    flags = ["-c"] if compressed else []
    for option in options:
        flags += ["-o", option]
    subprocess.run(
        ["qemu-img", "convert", *flags, "-f", "raw", "-O", "qcow2", str(raw), str(image)],
        check=True,
    )
    return image


def _scattered(size: int) -> bytes:
    """Data, holes and zero-filled stretches, not aligned to any cluster size."""
    disk = bytearray(size)
    for n, start in enumerate(range(3 * KIB, size - 200 * KIB, size // 7)):
        disk[start : start + 150 * KIB + n * 1000] = payload(150 * KIB + n * 1000, seed=n)
    return bytes(disk)


class _Arriving:
    """A file that has arrived up to ``landed``: a read waits (here: makes it land)
    just as far as it needs, so what runs hand on can be checked against it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.landed = 0

    def read(self, offset: int, length: int) -> bytes:
        self.landed = max(self.landed, min(len(self.data), offset + length))
        return self.data[offset : offset + length]


def _merged(found: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for run in found:
        last = out[-1] if out else None
        if (
            last
            and last.start + last.length == run.start
            and last.offset + last.length == run.offset
        ):
            out[-1] = Extent(last.start, last.length + run.length, last.offset)
        else:
            out.append(run)
    return out


@pytest.mark.parametrize(
    "options",
    [(), ("cluster_size=4096",), ("compat=0.10",), ("cluster_size=2M",)],
    ids=["default", "4k-clusters-many-l2", "version-2", "2m-clusters"],
)
def test_runs_are_what_qemu_img_maps_each_handed_on_once_landed(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    disk = _scattered(5 * MIB + 12345)
    image = _qcow2(tmp_path, disk, *options)
    data = image.read_bytes()
    arriving = _Arriving(data)
    found = []
    for run in runs(arriving.read):
        assert run.offset + run.length <= arriving.landed  # its bytes are there
        found.append(run)
    mapped = disk_map.plan(image, "qcow2", tmp_path / "disk.map")
    assert mapped is not None
    assert _merged(found) == list(mapped.extents())
    rebuilt = bytearray(mapped.size)  # qemu-img rounds the disk up to 512 bytes
    for run in found:
        rebuilt[run.start : run.start + run.length] = data[run.offset : run.offset + run.length]
    assert rebuilt == disk + bytes(mapped.size - len(disk))


def test_the_first_runs_leave_long_before_the_file_has_arrived(tmp_path: Path) -> None:
    """The point of following: qemu-img writes tables before the clusters they map."""
    image = _qcow2(tmp_path, payload(4 * MIB, seed=9))
    arriving = _Arriving(image.read_bytes())
    first = next(runs(arriving.read))
    assert first.start == 0
    assert arriving.landed < 512 * KIB < len(arriving.data)


@pytest.mark.parametrize(
    ("options", "compressed", "reason"),
    [
        (("extended_l2=on",), False, "incompatible features"),
        ((), True, "compressed clusters"),
    ],
    ids=["extended-l2", "compressed"],
)
def test_anything_but_the_plain_layout_is_not_followed(
    tmp_path: Path, options: tuple[str, ...], compressed: bool, reason: str
) -> None:
    disk = payload(KIB, seed=1) * 1024
    image = _qcow2(tmp_path, disk, *options, compressed=compressed)
    with pytest.raises(NotFollowable, match=reason):
        list(runs(_Arriving(image.read_bytes()).read))


def test_a_backing_file_or_encryption_is_refused_from_the_header(tmp_path: Path) -> None:
    image = tmp_path / "child.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(image)],
        check=True,
    )
    with pytest.raises(NotFollowable, match="backing file"):
        layout(image.read_bytes()[:HEAD_BYTES])
    head = bytearray(_qcow2(tmp_path, bytes(MIB)).read_bytes()[:HEAD_BYTES])
    head[32:36] = (1).to_bytes(4, "big")  # crypt_method AES
    with pytest.raises(NotFollowable, match="encrypted"):
        layout(bytes(head))
    with pytest.raises(NotFollowable, match="not a qcow2"):
        layout(b"\0" * HEAD_BYTES)
