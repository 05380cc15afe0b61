"""A plain ``Transfer`` for driver tests: a stream of chunks and an in-memory journal.

This is not a fake of a peer: it is the caller's side of the driver interface,
which in the daemon is ``migratio.transfer.StepTransfer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from migratio.drivers.base import BaseVersion


class Payload:
    def __init__(
        self,
        chunks: Iterable[bytes] = (),
        *,
        disk_format: str = "raw",
        sha512: str | None = None,
        size: int | None = None,
        path: Path | None = None,
        base: BaseVersion | None = None,
    ) -> None:
        self._chunks = chunks
        self.disk_format = disk_format
        self.sha512 = sha512
        self.size = size
        self.path = path
        self.disk_map = None
        self.state: dict[str, Any] = {}
        self.artifacts: list[tuple[str, str]] = []
        # The earlier version the record was started from, and the manifests kept.
        self.base: BaseVersion | None = base
        self.manifests: dict[str, bytes] = {}
        self.progress_calls = 0

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        if self.path is not None:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                while chunk := handle.read(1 << 20):
                    yield chunk
            return
        if offset:
            raise ValueError("this payload can only be read from the start")
        yield from self._chunks

    def progress(self, bytes_done: int) -> None:
        self.progress_calls += 1

    def pace(self, amount: int) -> None:
        """No caps here: nothing to wait for."""

    def load_state(self) -> dict[str, Any]:
        return dict(self.state)

    def save_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def add_artifact(self, kind: str, ref: str) -> None:
        self.artifacts.append((kind, ref))

    def keep_manifest(self, record_id: str, manifest: bytes) -> None:
        self.manifests[record_id] = manifest
