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


def as_raw(qcow2: Path, target: Path) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(target)], check=True
    )
    return target
