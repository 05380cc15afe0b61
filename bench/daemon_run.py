"""Run ``migratio run --until-idle`` as a benchmark does: wall time and the
daemon's own peak RSS; and submit and show migrations around it.

A peak RSS is the process's VmHWM, polled every 10 ms: wait4's ru_maxrss would
count the benchmark's own RSS, which the child carries until its exec. Its CPU
seconds (user + system, its own threads, not its children) come from the same polls:
on a shared 2-core machine they say what a change costs better than wall time. Submitting and
showing happen in this process, through the functions the CLI calls: each
``migratio`` start-up costs seconds on a busy machine, outside what is measured,
and CI runs every benchmark within two minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migratio import operations, reports
from migratio.config import load_settings


@dataclass(frozen=True)
class DaemonRun:
    seconds: float
    peak_rss_mib: float
    cpu_seconds: float
    # The whole machine's busy CPU seconds meanwhile (the peers' too): a run that
    # kept every core busy cannot be made faster here by more parallelism.
    machine_cpu_seconds: float = 0.0


def run_until_idle(config: Path) -> DaemonRun:
    busy = machine_busy_seconds()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "migratio", "--config", str(config), "run", "--until-idle"],
        stderr=subprocess.DEVNULL,
    )
    cpu = {process.pid: 0.0}
    peak_mib = peak_rss_mib([process], cpu)
    seconds = time.monotonic() - started
    assert process.returncode == 0, f"migratio run exited {process.returncode}"
    return DaemonRun(seconds, peak_mib, cpu[process.pid], machine_busy_seconds() - busy)


def peak_rss_mib(
    processes: list[subprocess.Popen[Any]], cpu: dict[int, float] | None = None
) -> float:
    """Wait for the processes to exit; the sum of their peak RSS (each one's
    VmHWM, polled every 10 ms). ``cpu``, when given, gets each one's CPU seconds
    as last seen (by pid)."""
    peaks = dict.fromkeys((p.pid for p in processes), 0)
    polls = 0
    while any(p.poll() is None for p in processes):
        for pid in peaks:
            peaks[pid] = max(peaks[pid], vm_hwm_kib(pid))
            if cpu is not None and polls % 10 == 0:
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
        polls += 1
        time.sleep(0.01)
    return sum(peaks.values()) / 1024


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far, its threads' included (0 once gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of the processes ``roots`` and all their
    descendants now alive, each with what its reaped children used (so an ``sshd``
    session or a CLI run that has ended still counts, in its parent's)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick
    inside = set(roots) & used.keys()
    while True:
        grown = inside | {pid for pid, parent in parents.items() if parent in inside}
        if grown == inside:
            return sum(used[pid] for pid in inside)
        inside = grown


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set so far (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def submit(config: Path, image_ids: list[str], dest: str, source: str = "site-a") -> list[str]:
    """Queue one migration per image, as ``migratio submit`` does; their ids."""
    settings = load_settings(config)
    ledger = operations.open_ledger(settings)
    try:
        return [operations.submit(settings, ledger, i, source, dest).id for i in image_ids]
    finally:
        ledger.engine.dispose()


def show(config: Path, migration_ids: list[str]) -> list[dict[str, Any]]:
    """Each migration as ``migratio show --json`` prints it."""
    ledger = operations.open_ledger(load_settings(config), migrate=False)
    try:
        return [reports.describe(ledger, ledger.get(m)) for m in migration_ids]
    finally:
        ledger.engine.dispose()
