"""qemu-img does not outlive a daemon killed with SIGKILL (the crash matrix's
``convert.running``): an orphan would go on writing into a work dir that the next
daemon cleans and reuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support.leaks import qemu_processes


def test_qemu_img_dies_with_the_process_that_runs_it(tmp_path: Path) -> None:
    # qemu-img blocks opening a FIFO nobody writes to: it would wait forever.
    fifo = tmp_path / "never-written.raw"
    os.mkfifo(fifo)
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from migratio import qemu; "
            f"qemu.info(Path({str(fifo)!r}), 'raw')",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not qemu_processes(tmp_path):
            assert time.monotonic() < deadline and runner.poll() is None, "qemu-img never ran"
            time.sleep(0.02)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        deadline = time.monotonic() + 10
        while qemu_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert qemu_processes(tmp_path) == []
    finally:
        runner.kill()
        runner.wait(10)
        for pid in qemu_processes(tmp_path):
            psutil.Process(pid).kill()
