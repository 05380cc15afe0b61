"""The group's spool on its own (``migratio.group_read``): a writer appends from
where a dead one stopped, and a spool that fails verification is dropped."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from migratio.errors import IntegrityError
from migratio.group_read import Read, append_source, part_of

DATA = bytes(range(256)) * 1024  # 256 KiB


def _reader(data: bytes, reads: list[int]) -> Read:
    @contextmanager
    def read(offset: int) -> Iterator[Iterator[bytes]]:
        reads.append(offset)
        yield iter([data[i : i + 10_000] for i in range(offset, len(data), 10_000)])

    return read


def _unpaced(chunks: Iterable[bytes]) -> Iterable[bytes]:
    return chunks


def test_a_writer_appends_from_where_the_part_ends(tmp_path: Path) -> None:
    final = tmp_path / "source.raw"
    part_of(final).write_bytes(DATA[:100_000])  # left by a writer that died
    reads: list[int] = []
    sha512 = hashlib.sha512(DATA).hexdigest()

    append_source(final, len(DATA), sha512, _reader(DATA, reads), _unpaced, "test image")

    assert reads == [100_000]
    assert final.read_bytes() == DATA
    assert not part_of(final).exists()


def test_a_spool_that_fails_verification_is_dropped(tmp_path: Path) -> None:
    final = tmp_path / "source.raw"
    part_of(final).write_bytes(b"\0" * 100_000)  # not the source's bytes
    sha512 = hashlib.sha512(DATA).hexdigest()

    with pytest.raises(IntegrityError, match="spool is dropped"):
        append_source(final, len(DATA), sha512, _reader(DATA, []), _unpaced, "test image")

    assert not final.exists() and not part_of(final).exists()
    append_source(final, len(DATA), sha512, _reader(DATA, []), _unpaced, "test image")
    assert final.read_bytes() == DATA
