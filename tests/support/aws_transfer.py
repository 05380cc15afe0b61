"""A ``Transfer`` for calling the AWS driver directly: a local file, an in-memory
journal, and a shutdown that can be triggered after so many checkpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from migratio.disk_map import DiskMap
from migratio.drivers.base import BaseVersion
from migratio.errors import ShuttingDown


class FileTransfer:
    def __init__(
        self,
        path: Path,
        *,
        disk_format: str = "raw",
        sha512: str | None = "compute",
        state: dict[str, Any] | None = None,
        stop_after: int | None = None,
        stop_when: Callable[[dict[str, Any]], bool] | None = None,
        disk_map: DiskMap | None = None,
        base: BaseVersion | None = None,
    ) -> None:
        """With ``disk_map``, ``path`` is an image holding the raw payload it maps."""
        self.path = path
        self.disk_map = disk_map
        self.disk_format = disk_format
        self.sha512 = (
            hashlib.sha512(path.read_bytes()).hexdigest() if sha512 == "compute" else sha512
        )
        self.size = path.stat().st_size if disk_map is None else disk_map.size
        self.state: dict[str, Any] = dict(state or {})
        self.saves = 0
        self.artifacts: list[tuple[str, str]] = []
        # The earlier version the record was started from, and the manifests kept.
        self.base: BaseVersion | None = base
        self.manifests: dict[str, bytes] = {}
        self.checkpoints = 0
        self.paced = 0
        self.stop_after = stop_after
        self.stop_when = stop_when

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        raise AssertionError("a destination that wants a file must not stream")

    def progress(self, bytes_done: int) -> None:
        self.checkpoints += 1
        if self.stop_after is not None and self.checkpoints > self.stop_after:
            raise ShuttingDown("test: daemon stopping")
        if self.stop_when is not None and self.stop_when(self.state):
            raise ShuttingDown("test: daemon stopping")

    def pace(self, amount: int) -> None:
        """No caps here: only counted (every byte sent must be asked for first)."""
        self.paced += amount

    def load_state(self) -> dict[str, Any]:
        return dict(self.state)

    def save_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)
        self.saves += 1

    def add_artifact(self, kind: str, ref: str) -> None:
        self.artifacts.append((kind, ref))

    def keep_manifest(self, record_id: str, manifest: bytes) -> None:
        self.manifests[record_id] = manifest
