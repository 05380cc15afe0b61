"""The work dir: there (or creatable), writable, and with room for conversions.
Doctor does not create it (the daemon does, at start); it writes one probe file
into it and removes it, the only proof that writing works (permissions, a
read-only mount, a full quota)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from migratio.doctor.result import Check, Verdict, fail, ok, warn

if TYPE_CHECKING:
    from migratio.doctor.runner import Chain

GIB = 1 << 30


def chain(work_dir: Path, min_free: int) -> Chain:
    from migratio.doctor.runner import Chain

    return Chain(
        "work dir",
        [
            Check("work dir", lambda: writable(work_dir)),
            Check("work dir: free space", lambda: free_space(work_dir, min_free)),
        ],
    )


def writable(work_dir: Path) -> Verdict:
    if work_dir.exists():
        if not work_dir.is_dir():
            return fail(f"{work_dir} is not a directory")
        try:
            with tempfile.NamedTemporaryFile(dir=work_dir, prefix=".migratio-doctor-"):
                pass
        except OSError as exc:
            return fail(f"{work_dir} is not writable: {exc.strerror or exc}")
        return ok(f"{work_dir} is writable")
    parent = existing_parent(work_dir)
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return ok(f"{work_dir} does not exist yet; the daemon creates it in {parent}, writable")
    return fail(f"{work_dir} does not exist and cannot be created: {parent} is not writable")


def free_space(work_dir: Path, min_free: int) -> Verdict:
    where = existing_parent(work_dir)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return fail(f"cannot measure free space at {where}: {exc.strerror or exc}")
    text = f"{gib(free)} free at {where}"
    if free < min_free:
        return warn(f"{text}, under {gib(min_free)}: conversions may run out of space")
    return ok(f"{text} (warns under {gib(min_free)})")


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
