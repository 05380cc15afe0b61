"""The files a fan-out group shares in the work dir: the staged source and one
conversion per target format, in ``<work_dir>/groups/<group id>/``.

Members of a group run as independent migrations, possibly at the same time in
several workers: whoever comes first makes a file while holding its lock, the
others wait for the lock (checkpointing, so a cancel or shutdown still stops
them) and then find the file made. A file appears under its final name only
once complete and verified, so finding it is proof enough. The directory belongs
to the group: the member that ends last removes it (``migratio.cleanup``).
Several daemons share a group's read only when they share the work dir (one
host); on several hosts each stages its own copy.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# How often a member waiting for a sibling's file looks again (and checkpoints).
LOCK_POLL_SECONDS = 0.05
# The artifact kind each member records for its share of the group's directory.
SHARED = "group_files"


def group_dir(work_dir: Path, group_id: str) -> Path:
    return work_dir / "groups" / group_id


@contextmanager
def making(path: Path, between: Callable[[], None]) -> Iterator[None]:
    """Hold the lock on making ``path``; ``between`` runs while waiting for it
    (a step's checkpoint: it raises to stop the wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                between()
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_making(path: Path) -> IO[str] | None:
    """The lock on making ``path`` if no one holds it (the open handle: closing it
    lets go), else None. For a reader deciding whether it must become the writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.with_name(f".{path.name}.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def group_ids(work_dir: Path) -> list[str]:
    """The groups that have a directory in ``work_dir``."""
    groups = work_dir / "groups"
    return sorted(entry.name for entry in groups.iterdir()) if groups.is_dir() else []


def remove_group_dir(work_dir: Path, group_id: str) -> None:
    shutil.rmtree(group_dir(work_dir, group_id), ignore_errors=True)
