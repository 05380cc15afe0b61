"""Checksums computed while bytes flow, so no copy is ever read twice to verify it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from migratio.errors import TransientError

FILE_CHUNK = 4 * 1024 * 1024


class Sha512Meter:
    """Counts and hashes the chunks that pass through it."""

    def __init__(self) -> None:
        self._hash = hashlib.sha512()
        self.bytes = 0
        self.finished = False

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in self.counting(chunks):
            self._hash.update(chunk)
            yield chunk

    def counting(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Counts only: for bytes verified elsewhere."""
        for chunk in chunks:
            self.bytes += len(chunk)
            yield chunk

    def verifying(
        self, chunks: Iterable[bytes], expected: str | None, what: str
    ) -> Iterator[bytes]:
        """Like ``through``; at the end of input, raise unless the sha512 is ``expected``.

        The error surfaces before a downstream guard releases its held-back last
        chunk, so a destination never completes an upload of unverified bytes.
        """
        yield from self.through(chunks)
        self.finished = True
        if expected and self.hexdigest != expected:
            raise TransientError(
                f"{what}: sha512 of the {self.bytes} bytes read does not match the recorded one"
            )

    @property
    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def verified(chunks: Iterable[bytes], expected_sha512: str | None, what: str) -> Iterator[bytes]:
    """``chunks``, checked against ``expected_sha512`` once they are all read."""
    return Sha512Meter().verifying(chunks, expected_sha512, what)


def file_chunks(path: Path, chunk_size: int = FILE_CHUNK, offset: int = 0) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(chunk_size):
            yield chunk


def sha512_of_file(path: Path) -> str:
    digest = hashlib.sha512()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()
