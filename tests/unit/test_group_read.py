"""The group's spool on its own (``migratio.group_read``): a writer appends from
where a dead one stopped, a spool that fails verification is dropped, and a
follower that leaves the check to the writer gets the last bytes only once the
very file it read is verified."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from migratio.errors import IntegrityError, TransientError
from migratio.group_read import Follower, Read, append_source, part_of

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


def _follower(final: Path, sha512: str) -> Follower:
    """A follower whose writer (started when no one writes) completes the part
    from DATA and verifies it against ``sha512``."""

    def start_writer(lock: IO[str], stop: threading.Event) -> threading.Thread:
        def write() -> None:
            try:
                append_source(final, len(DATA), sha512, _reader(DATA, []), _unpaced, "test", stop)
            except BaseException as error:
                follower.failed(error)
            finally:
                lock.close()

        writer = threading.Thread(target=write)
        writer.start()
        return writer

    follower = Follower(final, len(DATA), start_writer, lambda: None, stall_seconds=5)
    return follower


def _read(follower: Follower, final: Path, renamed: list[bool]) -> bytes:
    """What the follower yields; ``renamed`` gets, at each chunk, whether the
    spool was final by then."""
    read = b""
    for chunk in follower.chunks(until_verified=True):
        renamed.append(final.exists())
        read += chunk
    return read


def test_a_follower_gets_the_last_chunk_only_once_the_spool_it_read_is_verified(
    tmp_path: Path,
) -> None:
    final = tmp_path / "source.raw"
    part_of(final).write_bytes(DATA)  # all written; its writer stopped before the check
    renamed: list[bool] = []
    follower = _follower(final, hashlib.sha512(DATA).hexdigest())

    assert _read(follower, final, renamed) == DATA
    assert renamed[-1] is True
    assert final.read_bytes() == DATA


def test_a_follower_of_a_spool_that_fails_verification_never_gets_its_last_chunk(
    tmp_path: Path,
) -> None:
    final = tmp_path / "source.raw"
    part_of(final).write_bytes(b"\0" * len(DATA))  # not the source's bytes
    renamed: list[bool] = []
    follower = _follower(final, hashlib.sha512(DATA).hexdigest())

    with pytest.raises(IntegrityError, match="spool is dropped"):
        _read(follower, final, renamed)
    assert renamed == []  # DATA is one chunk: the last one, held back
    assert not final.exists()


def test_a_follower_that_read_a_spool_since_written_anew_reads_again(tmp_path: Path) -> None:
    final = tmp_path / "source.raw"
    part_of(final).write_bytes(DATA)
    final.write_bytes(DATA)  # another file became final: not the one this follower reads
    follower = _follower(final, hashlib.sha512(DATA).hexdigest())

    with pytest.raises(TransientError, match="written anew"):
        _read(follower, final, [])
