"""Freshly migrated, still empty SQLite databases, made once per package version.

``keystone-manage db_sync`` and ``glance-manage db_sync`` are most of the bed's
start-up CPU (~2-3 s each, far more on a loaded 2-core machine), and their
result depends only on the package version: the first run keeps a copy, later
ones (and the second Glance site) copy it. The copy holds a schema only, no
passwords or endpoints.
"""

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from . import sqlite

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """``$MIGRATIO_TESTBED_CACHE``, else ``~/.cache/migratio-testbed``."""
    configured = os.environ.get("MIGRATIO_TESTBED_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "migratio-testbed"


def migrated_database(package: str, target: Path, migrate: Callable[[], None]) -> None:
    """Put a migrated, empty database (WAL mode) at ``target``.

    ``migrate`` creates it at ``target`` when there is no cached copy for the
    installed version of ``package`` yet.
    """
    cached = cache_dir() / f"{package}-{installed_version(package)}.sqlite"
    with _lock_for(str(cached)):
        if cached.is_file():
            shutil.copyfile(cached, target)
            return
        migrate()
        sqlite.use_wal(target)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{os.getpid()}")
            shutil.copyfile(target, partial)
            partial.replace(cached)  # atomic: a concurrent bed never sees half a file
        except OSError:
            pass  # no cache, just slower next time


def installed_version(package: str) -> str:
    """The Debian version of ``package``, usable in a file name."""
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip().replace(":", "_").replace("/", "_") or "unknown"


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())
