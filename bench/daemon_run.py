"""Run ``migratio run --until-idle`` as a benchmark does: wall time and the
daemon's own peak RSS.

The peak is the daemon's VmHWM, polled every 10 ms (wait4's ru_maxrss would
also count the benchmark's RSS at fork time, which it inherits).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DaemonRun:
    seconds: float
    peak_rss_mib: float


def run_until_idle(config: Path) -> DaemonRun:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "migratio", "--config", str(config), "run", "--until-idle"],
        stderr=subprocess.DEVNULL,
    )
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, vm_hwm_kib(process.pid))
        time.sleep(0.01)
    seconds = time.monotonic() - started
    assert process.returncode == 0, f"migratio run exited {process.returncode}"
    return DaemonRun(seconds, peak_kib / 1024)


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
