"""The program that stages an SSH upload on the host, run here as ``ssh`` runs it
there (``python3 -I -c TEXT PATH OFFSET``, the bytes on stdin): the file holds
exactly the bytes sent after the kept prefix, and the sha512 it reports is the
whole file's, whether the bytes were hashed from its buffers or read back."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from migratio.drivers.ssh import host_writer
from migratio.drivers.ssh.stream import remote_writer

MiB = 1024 * 1024


def run_writer(path: Path, offset: int, data: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-I", "-c", remote_writer(), str(path), str(offset)]
    return subprocess.run(argv, input=data, capture_output=True, timeout=60, check=False)


def answer(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_new_file_holds_the_stream_and_its_sha512(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)  # whole buffers, then a tail of no whole block
    target = tmp_path / "image.part"
    said = answer(run_writer(target, 0, data))
    assert target.read_bytes() == data
    sha512 = hashlib.sha512(data).hexdigest()
    assert said == {"size": len(data), "hashed": len(data), "sha512": sha512}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_resumed_file_keeps_its_prefix_and_hashes_it_from_the_file(tmp_path: Path) -> None:
    prefix, stale, sent = os.urandom(2 * MiB), os.urandom(MiB), os.urandom(3 * MiB + 1)
    for offset in (len(prefix), len(prefix) - 12345):  # aligned, and not
        target = tmp_path / f"resumed-{offset}.part"
        target.write_bytes(prefix + stale)
        said = answer(run_writer(target, offset, sent))
        whole = prefix[:offset] + sent
        assert target.read_bytes() == whole
        assert said == {
            "size": len(whole),
            "hashed": len(whole),
            "sha512": hashlib.sha512(whole).hexdigest(),
        }


def test_buffers_the_stream_took_back_are_hashed_from_the_file(tmp_path: Path) -> None:
    """The stream ran ahead of a hasher still reading a resumed prefix: it took
    back the oldest buffers rather than wait; the hasher reads those bytes back."""
    prefix, sent = os.urandom(3 * MiB), os.urandom(12 * MiB + 7)
    target = tmp_path / "image.part"
    target.write_bytes(prefix + sent)
    staging = host_writer.Staging(len(prefix))
    chunks = [sent[i : i + host_writer.BUFFER] for i in range(0, len(sent), host_writer.BUFFER)]
    assert len(chunks) > host_writer.BUFFERS
    position = len(prefix)
    for chunk in chunks:  # no hasher yet: every buffer beyond the set is taken back
        view = staging.take()
        view[: len(chunk)] = chunk
        staging.hand(position, view, len(chunk))
        position += len(chunk)
    assert len(staging.handed) == host_writer.BUFFERS
    assert staging.handed[0][0] > len(prefix)
    reader = os.open(target, os.O_RDONLY)
    try:
        staging.hash_all(reader)
    finally:
        os.close(reader)
    assert staging.error is None
    assert staging.hashed == len(prefix + sent)
    assert staging.digest.hexdigest() == hashlib.sha512(prefix + sent).hexdigest()
    assert len(staging.free) == host_writer.BUFFERS and not staging.handed


def test_a_file_shorter_than_the_offset_is_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "short.part"
    target.write_bytes(b"x" * 100)
    done = run_writer(target, 4096, b"more")
    assert done.returncode == host_writer.SHORT
    assert b"shorter than 4096 bytes" in done.stderr
    assert target.read_bytes() == b"x" * 100


def test_a_path_it_cannot_write_is_a_one_line_error(tmp_path: Path) -> None:
    done = run_writer(tmp_path, 0, b"data")  # a directory
    assert done.returncode == host_writer.FAILED
    assert done.stderr.decode().splitlines() == [f"cannot write {tmp_path}: Is a directory"]
