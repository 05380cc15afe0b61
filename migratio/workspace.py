"""Files written into the work dir: a full disk is a transient error, never a failure.

Space frees up (another migration ends, an operator cleans up), so running out
of it is retried like any transient error; the half-written file is removed at
once, so the retry starts with the space it took given back.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from migratio.errors import WorkDirFull

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def work_dir_full(path: Path, needed: int | None) -> WorkDirFull:
    """The error for ``path`` not fitting: names the path and the bytes it needs."""
    wanted = f" (needs up to {needed} bytes)" if needed else ""
    return WorkDirFull(f"work dir full: no space left in {path.parent} for {path.name}{wanted}")


@contextmanager
def filling(path: Path, needed: int | None) -> Iterator[None]:
    """Write ``path`` in the block; if the disk fills up, remove it and raise WorkDirFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        path.unlink(missing_ok=True)
        raise work_dir_full(path, needed) from exc
