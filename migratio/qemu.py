"""qemu-img, run so that it never guesses a format and cannot run away with the host.

Every call names the format (`-f`): a probed format is how a "raw" image that is
really a qcow2 gets its backing file read (CVE-2024-32498). Calls run without a
shell, under prlimit, on absolute paths (so qemu never parses a "json:" or
"protocol:" prefix out of a file name). Run safety.check_file on untrusted bytes
first: `info` opens a VMDK's extent files to describe them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from migratio import faults
from migratio.errors import PermanentError, TransientError, UnsafeImage
from migratio.workspace import filling, work_dir_full

GIB = 1 << 30

# OpenStack's bounds for `qemu-img info` on untrusted input (Nova, Cinder, Glance).
INFO_ADDRESS_SPACE = GIB
INFO_CPU_SECONDS = 30
# Wall clock covers a stalled disk; the CPU cap is what stops a crafted busy loop.
INFO_TIMEOUT = 120

# Peak address space of a qcow2->raw conversion was 0.55 GiB with the default 8
# coroutines and 1.55 GiB with 16 (62 threads); qemu's I/O thread pool grows to 64.
# 1 GiB would break real conversions; 8 GiB still stops a runaway.
CONVERT_ADDRESS_SPACE = 8 * GIB
# Measured 0.6 CPU-s per GiB of qcow2->raw: 60 s + 30 s per GiB of virtual size is
# 50x that, room for compressed clusters and slow hosts.
CONVERT_CPU_BASE = 60
CONVERT_CPU_PER_GIB = 30
CONVERT_WALL_PER_CPU = 4

# The formats we let qemu-img open, by Glance name. qemu calls vhd "vpc"; iso and
# the EC2 ami/ari/aki are plain bytes to it, as is "gpt" (oslo's name for a raw disk
# with a partition table). Anything else -- nbd, vvfat, luks, qed -- is refused:
# a format name from image metadata must never pick a qemu protocol driver.
_QEMU_FORMATS = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vhd": "vpc",
    "vpc": "vpc",
    "vhdx": "vhdx",
    "vdi": "vdi",
    "iso": "raw",
    "gpt": "raw",
    "ami": "raw",
    "ari": "raw",
    "aki": "raw",
}

# Of those, the disk images a conversion can start from: an ISO is a CD image and
# aki/ari are a kernel and a ramdisk; converting their bytes to another disk
# format would only relabel them (and the format check would refuse the result).
CONVERTIBLE = frozenset({"raw", "qcow2", "vmdk", "vhd", "vpc", "vhdx", "vdi", "gpt", "ami"})

# VMDK kinds that keep their data inside the one file (Nova's vmdk_allowed_types).
_SELF_CONTAINED_VMDK = frozenset({"monolithicSparse", "streamOptimized"})

# Output options by target format. A VMDK is written stream-optimized: one
# self-contained file holding only allocated data, compressed -- the only VMDK
# kind AWS VM Import takes.
_TARGET_OPTIONS = {"vmdk": ["-o", "subformat=streamOptimized"]}

_MESSAGE_LIMIT = 500
# strerror(ENOSPC) and strerror(EDQUOT) in qemu-img's messages (run with LC_ALL=C).
_NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")


class _NoSpace(TransientError):
    """qemu-img ran out of space; ``convert`` names the file and the bytes it needs."""


def info(path: Path, fmt: str) -> dict[str, Any]:
    """`qemu-img info --output=json` with the format forced, within OpenStack's limits."""
    described = _json_of("info", path, fmt)
    if not isinstance(described, dict):
        raise PermanentError(f"qemu-img info printed no JSON object for {path.name}")
    return described


def data_size(path: Path, fmt: str) -> int:
    """Bytes of guest data in the image (`qemu-img map`): what a sparse raw copy
    of it takes on disk. Only for a file that passed the safety check (map follows
    backing files)."""
    return sum(int(e["length"]) for e in extents(path, fmt) if e.get("data") and not e.get("zero"))


def extents(path: Path, fmt: str) -> list[dict[str, Any]]:
    """`qemu-img map --output=json`: the guest disk's runs in order, each with its
    ``start``, ``length``, ``data``, ``zero`` and, where the run is stored as is in
    the file, its ``offset`` there. Only for a file that passed the safety check."""
    listed = _json_of("map", path, fmt)
    try:
        if not isinstance(listed, list):
            raise TypeError(listed)
        for entry in listed:
            int(entry["start"]), int(entry["length"])
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise PermanentError(f"qemu-img map printed no extent list for {path.name}") from exc
    return listed


def _json_of(action: str, path: Path, fmt: str) -> Any:
    """What `qemu-img ACTION --output=json` prints, the format forced, within the
    limits OpenStack puts on qemu-img info."""
    argv = [
        *_limits(INFO_ADDRESS_SPACE, INFO_CPU_SECONDS),
        _tool("qemu-img", "qemu-utils"),
        action,
        "--output=json",
        "-f",
        _qemu_format(fmt),
        _file_argument(path),
    ]
    output = _run(argv, action, INFO_CPU_SECONDS, INFO_TIMEOUT)
    try:
        return json.loads(output)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"qemu-img {action} printed no JSON for {path.name}") from exc


def check_info_safe(info: dict[str, Any]) -> None:
    """Refuse what qemu-img itself reports as pointing at other host files."""
    fmt = info.get("format", "image")
    backing = info.get("backing-filename", info.get("full-backing-filename"))
    if backing is not None:
        raise UnsafeImage(f"{fmt} image has a backing file: {_quoted(backing)}")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if not isinstance(data, dict):
        return
    if data.get("data-file") is not None:
        raise UnsafeImage(f"{fmt} image has an external data file: {_quoted(data['data-file'])}")
    create_type = data.get("create-type")
    if fmt == "vmdk" and create_type not in _SELF_CONTAINED_VMDK:
        raise UnsafeImage(
            f"vmdk image of type {_quoted(create_type)} keeps its data in other files"
        )


def check_consistent(path: Path, fmt: str) -> None:
    """Refuse an image whose metadata points past its own end (a truncated qcow2).

    qemu-img convert reads the missing clusters as zeros and exits 0: without this
    check a cut-short template converts "successfully" into a disk with holes.
    `qemu-img check` exits 2 on corruption, 3 on leaked clusters only (harmless),
    63 for formats it cannot check (raw, vpc).
    """
    qemu_img = _tool("qemu-img", "qemu-utils")
    qemu_format = _qemu_format(fmt)
    if qemu_format == "raw":
        return
    argv = [
        *_limits(INFO_ADDRESS_SPACE, INFO_CPU_SECONDS),
        qemu_img,
        "check",
        "--output=json",
        "-f",
        qemu_format,
        _file_argument(path),
    ]
    done = _execute(argv, "check", INFO_TIMEOUT)
    if done.returncode in (0, 3, 63):
        return
    reason = _failure(done, "check", INFO_CPU_SECONDS)
    raise PermanentError(f"{fmt} image is damaged (qemu-img check): {reason}")


def convert(source: Path, source_format: str, target: Path, target_format: str) -> None:
    """Convert source into target, which appears only once complete and on disk.

    qemu-img writes `.<target name>.part` beside target (a fixed name, so a retry
    after a crash overwrites the leftover); it is renamed over target after fsync.
    The source is described and checked first, which also sizes the CPU cap.
    Output keeps runs of zeros as holes (-S 4k), so a raw target stays sparse.
    Measured: -W and -m 16 gave no gain for qcow2->raw on local disk, so neither
    is used.
    """
    qemu_img = _tool("qemu-img", "qemu-utils")
    described = info(source, source_format)
    check_info_safe(described)
    check_consistent(source, source_format)
    virtual_size = described.get("virtual-size")
    if not isinstance(virtual_size, int):
        virtual_size = source.stat().st_size
    cpu_seconds = CONVERT_CPU_BASE + CONVERT_CPU_PER_GIB * math.ceil(virtual_size / GIB)
    partial = target.with_name(f".{target.name}.part")
    argv = [
        *_limits(CONVERT_ADDRESS_SPACE, cpu_seconds),
        qemu_img,
        "convert",
        "-f",
        _qemu_format(source_format),
        "-O",
        _qemu_format(target_format),
        *_TARGET_OPTIONS.get(_qemu_format(target_format), []),
        "-S",
        "4k",
        _file_argument(source),
        _file_argument(partial),
    ]
    try:
        partial.unlink(missing_ok=True)
        with filling(partial, virtual_size):
            _run(argv, "convert", cpu_seconds, cpu_seconds * CONVERT_WALL_PER_CPU)
            _fsync(partial)
            partial.replace(target)
    except _NoSpace:
        partial.unlink(missing_ok=True)
        raise work_dir_full(target, virtual_size) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _qemu_format(fmt: str) -> str:
    try:
        return _QEMU_FORMATS[fmt.lower()]
    except KeyError:
        raise PermanentError(f"refusing to let qemu-img open format {fmt!r}") from None


def _file_argument(path: Path) -> str:
    return str(path.absolute())


def _limits(address_space: int, cpu_seconds: int) -> list[str]:
    # setpriv: qemu-img dies with the daemon (SIGKILL included) instead of
    # running on, orphaned, into a work dir the next daemon cleans and reuses.
    return [
        _tool("setpriv", "util-linux"),
        "--pdeathsig",
        "KILL",
        "--",
        _tool("prlimit", "util-linux"),
        f"--as={address_space}",
        f"--cpu={cpu_seconds}",
        "--",
    ]


def _tool(name: str, debian_package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PermanentError(
            f"{name} not found on PATH: install the Debian package {debian_package}"
        )
    return found


def _run(argv: list[str], action: str, cpu_seconds: int, timeout: float) -> str:
    """Run qemu-img; its first stderr line becomes the error, stdout is returned."""
    done = _execute(argv, action, timeout)
    if done.returncode == 0:
        return done.stdout
    if any(text in done.stderr for text in _NO_SPACE_TEXTS):
        raise _NoSpace(_first_line(done.stderr)[:_MESSAGE_LIMIT])
    raise PermanentError(_failure(done, action, cpu_seconds))


def _execute(argv: list[str], action: str, timeout: float) -> subprocess.CompletedProcess[str]:
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=os.environ | {"LC_ALL": "C"},
    ) as process:
        faults.point(f"{action}.running")
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.communicate()
            raise TransientError(
                f"qemu-img {action} did not finish within {timeout:.0f} s"
            ) from exc
        except BaseException:
            process.kill()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _failure(done: subprocess.CompletedProcess[str], action: str, cpu_seconds: int) -> str:
    """Why a qemu-img run failed, in one line: its first stderr line, else the signal or status."""
    if first_line := _first_line(done.stderr):
        return first_line[:_MESSAGE_LIMIT]
    if done.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        # prlimit sets soft = hard, so the kernel's answer to the CPU cap is SIGKILL.
        name = signal.Signals(-done.returncode).name
        return f"qemu-img {action} was killed by {name} (CPU-time limit {cpu_seconds} s)"
    if done.returncode < 0:
        return f"qemu-img {action} was killed by {signal.Signals(-done.returncode).name}"
    return f"qemu-img {action} exited with status {done.returncode}"


def _quoted(value: object) -> str:
    return repr(value)[:_MESSAGE_LIMIT]


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    _fsync(directory)
