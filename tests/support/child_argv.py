"""Samples the command lines of a daemon and its children while a test runs, into
a file the secrets grep reads: a secret passed on a command line (``qemu-img``,
``ssh``, a helper) is visible to every user of the host in ``ps``."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

import psutil

SAMPLE_SECONDS = 0.05


class ChildArgvSampler:
    """Records each distinct argv of ``pid`` and its descendants into ``out``
    (one NUL-separated argv per line) until stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.seen: set[tuple[str, ...]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="argv-sampler", daemon=True)

    def __enter__(self) -> ChildArgvSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        with self.out.open("w", encoding="utf-8", errors="backslashreplace") as stream:
            for argv in sorted(self.seen):
                stream.write("\0".join(argv) + "\n")

    @property
    def children_seen(self) -> int:
        """Distinct argv other than the daemon's own."""
        return max(0, len(self.seen) - 1)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                daemon = psutil.Process(self.pid)
                processes = [daemon, *daemon.children(recursive=True)]
            except psutil.Error:
                continue
            self.samples += 1
            for process in processes:
                try:
                    self.seen.add(tuple(process.cmdline()))
                except psutil.Error:  # exited between listing and reading
                    continue
