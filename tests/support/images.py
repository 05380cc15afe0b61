"""Real disk images for tests, made with qemu-img, and checksums of them."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

MIB = 1024 * 1024


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def random_raw(path: Path, size_mib: int) -> Path:
    with path.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MIB))
    return path


def random_qcow2(path: Path, size_mib: int) -> Path:
    """A qcow2 whose every cluster holds random data (incompressible, no zeros)."""
    raw = random_raw(path.with_suffix(".raw"), size_mib)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return path


def qcow2_with_backing_file(path: Path, backing: str = "/etc/hostname") -> Path:
    """The CVE-2024-32498 shape: a qcow2 that makes qemu-img read a host file."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", str(path), "16M"],
        check=True,
    )
    return path


def as_raw(image: Path, target: Path, fmt: str = "qcow2") -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(target)], check=True
    )
    return target


KIB = 1024
BLOCK = 512 * KIB  # EBS's block
# Five EBS blocks and a partial one (a multiple of 512 bytes, as qemu sizes disks).
OUT_OF_ORDER_SIZE = 5 * BLOCK + 12 * KIB


def qcow2_out_of_order(path: Path) -> Path:
    """A qcow2 written back to front with qemu-io, so its clusters lie in the file in
    another order than in the disk: data across the 1|2 block border, a piece ending
    mid-cluster, explicit zero clusters in block 3, allocated zeros in block 4, data
    in the last partial block. Non-zero 512 KiB blocks: 0, 1, 2 and 5."""
    size = OUT_OF_ORDER_SIZE
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
    writes = [
        f"write -P 0x5a {size - 8 * KIB} 8k",
        f"write -z {3 * BLOCK} 128k",
        f"write -P 0x11 {2 * BLOCK - 100 * KIB} 200k",
        f"write -P 0x00 {4 * BLOCK} 64k",
        "write -P 0xc3 4k 70k",
    ]
    argv = ["qemu-io", "-f", "qcow2"]
    for command in writes:
        argv += ["-c", command]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)
    return path


def qcow2_with_data_file(path: Path, data_file: Path) -> Path:
    """A qcow2 whose clusters live in another host file (``data_file=``)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(data_file), "16M"], check=True)
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={data_file}",
            str(path),
            "16M",
        ],
        check=True,
    )
    return path


def vmdk_descriptor(path: Path, extent: str, create_type: str = "monolithicSparse") -> Path:
    """A bare VMDK descriptor (text) whose one extent is ``extent``: a host path
    (``/etc/hostname``) makes qemu-img read that file as the disk."""
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=35caa4fa\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\n'
        f'RW 32768 SPARSE "{extent}"\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n',
        encoding="ascii",
    )
    return path


def iso_image(path: Path, size_mib: int = 2) -> Path:
    """An ISO 9660 image as far as any format probe can tell (the CD001 volume
    descriptor at 32 KiB), random data elsewhere."""
    data = bytearray(os.urandom(size_mib * MIB))
    data[0:32768] = bytes(32768)
    data[32768:32774] = b"\x01CD001"
    path.write_bytes(bytes(data))
    return path


def truncated(source: Path, path: Path, keep: int) -> Path:
    """The first ``keep`` bytes of ``source``: an image cut short in transit."""
    with source.open("rb") as handle:
        path.write_bytes(handle.read(keep))
    return path
