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
    """Records each distinct argv of the processes ``roots`` (a daemon, the bed's
    sshd whose children run the remote commands) and their descendants into
    ``out`` (one NUL-separated argv per line) until stopped."""

    def __init__(self, roots: list[int], out: Path) -> None:
        self.roots = roots
        self.out = out
        self.seen: set[tuple[str, ...]] = set()
        self.root_argv: set[tuple[str, ...]] = set()
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
        """Distinct argv of the roots' descendants."""
        return len(self.seen - self.root_argv)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.samples += 1
            for pid in self.roots:
                try:
                    root = psutil.Process(pid)
                    self.root_argv.add(tuple(root.cmdline()))
                    processes = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                for process in processes:
                    try:
                        self.seen.add(tuple(process.cmdline()))
                    except psutil.Error:  # exited between listing and reading
                        continue
