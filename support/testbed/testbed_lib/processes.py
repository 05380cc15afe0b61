"""Start, watch and stop the bed's servers as detached process groups.

Servers run in their own session (so they outlive ``testbed up`` and can be
stopped as a group) with stdin from /dev/null and stdout/stderr in a log file
(so ``testbed up DIR | cat`` or pytest's capture never waits on them).
"""

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import http
from .errors import TestbedError

# Every server gets this variable in its environment (value: the bed's
# directory); ``stop`` only signals processes carrying it, so a pid reused by
# an unrelated process after a crash is never touched.
MARK_VARIABLE = "MIGRATIO_TESTBED_MARK"

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Popen objects of servers this interpreter started: holding them avoids the
# "subprocess is still running" ResourceWarning and lets ``stop`` reap them.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Server:
    """A started server: its name in the bed, pid (which is also its process group),
    the kernel's start time of that pid, its mark and its log."""

    name: str
    pid: int
    start_ticks: int
    mark: str
    log: Path


def system_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Debian's OpenStack tools.

    They run under /usr/bin/python3; the caller's pyenv/virtualenv variables and
    ``OS_*`` cloud settings would leak into them and change what they load.
    """
    dropped = ("PYTHON", "PYENV", "VIRTUAL_ENV", "CONDA", "OS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = SYSTEM_PATH
    env.setdefault("LANG", "C.UTF-8")
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str],
    log: Path,
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> None:
    """Run a setup command to completion, appending its output to ``log``.

    ``what`` names the command in errors, e.g. "keystone-manage db_sync".
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else system_env(),
                cwd=cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TestbedError(f"{what} timed out after {timeout:g} s; read {log}") from None
        except OSError as exc:
            raise TestbedError(f"cannot run {what}: {exc.strerror}; read {log}") from None
    if result.returncode != 0:
        raise TestbedError(f"{what} failed (exit {result.returncode}); read {log}")


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    mark: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    """Start a long-running server detached from the caller."""
    log.parent.mkdir(parents=True, exist_ok=True)
    server_env = dict(env) if env is not None else system_env()
    server_env[MARK_VARIABLE] = mark
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise TestbedError(f"cannot start {name}: {exc.strerror}; read {log}") from None
    _children[proc.pid] = proc
    ticks = start_ticks(proc.pid) or 0
    return Server(name=name, pid=proc.pid, start_ticks=ticks, mark=mark, log=log)


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (ticks since boot); None if gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def is_running(server: Server) -> bool:
    """Whether the server's leading process still exists and is the one we started."""
    proc = _children.get(server.pid)
    if proc is not None:
        proc.poll()  # reap it if it exited, so it does not linger as a zombie
    ticks = start_ticks(server.pid)
    return ticks is not None and ticks == server.start_ticks


def stop(servers: Sequence[Server], grace: float = 5.0) -> None:
    """SIGTERM each server's processes, then SIGKILL what is left after ``grace`` s.

    Servers already gone are skipped. A group whose leader died is still swept
    for marked members (orphaned workers).
    """
    pending = [s for s in servers if _alive_pids(s)]
    for server in pending:
        _signal(server, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [s for s in pending if _alive_pids(s)]
    for server in pending:
        _signal(server, signal.SIGKILL)
    for server in servers:
        proc = _children.pop(server.pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)


def descendants(pid: int) -> list[Server]:
    """Every live process started, directly or not, by ``pid`` (sshd's sessions, which
    leave its process group): for ``stop_service``, which ends them with their server."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[Server] = []
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        ticks = start_ticks(child)
        if ticks is not None:
            found.append(Server(f"child {child}", child, ticks, "", Path("/dev/null")))
        pending.extend(children.get(child, []))
    return found


def end(started: Sequence[Server], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s, processes that are still the ones seen."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in started:
            if is_running(process):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(process.pid, sig)
        deadline = time.monotonic() + grace
        while any(is_running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_http(server: Server, url: str, timeout: float = 60.0) -> None:
    """Return once ``url`` answers 2xx; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            status, _ = http.call(url, timeout=2)
            if 200 <= status < 300:
                return
        if not is_running(server):
            raise TestbedError(f"{server.name} exited while starting; read {server.log}")
        if time.monotonic() > deadline:
            raise TestbedError(
                f"{server.name} not ready at {url} after {timeout:g} s; read {server.log}"
            )
        time.sleep(0.1)


def _alive_pids(server: Server) -> list[int]:
    """The server's leader (if still ours) plus marked members of its group."""
    members = set(_members(server))
    if is_running(server):
        members.add(server.pid)
    return sorted(members)


def _members(server: Server) -> list[int]:
    """Live processes in the server's process group that carry its mark."""
    marker = f"{MARK_VARIABLE}={server.mark}".encode() + b"\0"
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] == "Z" or int(fields[2]) != server.pid:
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                members.append(int(entry.name))
        except OSError:
            continue
    return members


def _signal(server: Server, sig: signal.Signals) -> None:
    # A live leader proves the group is ours, so the whole group gets the signal
    # (including workers that rewrote their environment area for a process title).
    targets = [-server.pid] if is_running(server) else _members(server)
    for target in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (the name before may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()
