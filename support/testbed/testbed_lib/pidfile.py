"""DIR/pids.json: which servers ``up`` started, so ``down`` stops exactly those.

Written after every start (not only at the end), so a crash half-way through
``up`` still leaves a record ``down`` can clean up from.
"""

import json
import threading
from pathlib import Path

from .processes import Server

PIDS_FILE = "pids.json"

_lock = threading.Lock()


def record(directory: Path, server: Server) -> None:
    """Add ``server`` to the directory's record (safe to call from several threads)."""
    with _lock:
        servers = {s.name: s for s in load(directory)}
        servers[server.name] = server
        _write(directory, list(servers.values()))


def load(directory: Path) -> list[Server]:
    """The recorded servers; empty if nothing was recorded."""
    path = directory / PIDS_FILE
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [
        Server(
            name=e["name"],
            pid=int(e["pid"]),
            start_ticks=int(e["start_ticks"]),
            mark=e["mark"],
            log=Path(e["log"]),
        )
        for e in entries
    ]


def forget(directory: Path) -> None:
    """Drop the record once its servers are stopped."""
    with _lock:
        (directory / PIDS_FILE).unlink(missing_ok=True)


def _write(directory: Path, servers: list[Server]) -> None:
    entries = [
        {
            "name": s.name,
            "pid": s.pid,
            "start_ticks": s.start_ticks,
            "mark": s.mark,
            "log": str(s.log),
        }
        for s in servers
    ]
    tmp = directory / f".{PIDS_FILE}.tmp"
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(directory / PIDS_FILE)
