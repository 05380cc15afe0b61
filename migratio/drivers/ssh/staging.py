"""The staging area on an SSH site's external host: a file per migration, written
through ``ssh`` (``ssh_stream``; paramiko's SFTP where this machine has no ``ssh``)
and resumable after a crash.

While bytes flow, the sha256 of every complete block sent is kept in the
migration's transfer state (saved about once a second). A resumed upload asks
the host for the hashes of the blocks it holds, continues after the last block
that matches, and truncates the rest; anything else starts over. The journal is
only a claim: the remote hashes are the truth. At the end, the sha512 of the
whole staged file, computed on the host as it was written, must equal the
payload's; only then is the file renamed to its verified name.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from migratio import faults, stall
from migratio.drivers.base import Transfer
from migratio.drivers.ssh import stream
from migratio.drivers.ssh.hashes import Digest, Journal, RemoteHashes
from migratio.drivers.ssh.remote import RemoteHost
from migratio.errors import IntegrityError, TransientError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SAVE_INTERVAL_SECONDS = 1.0
SHA512_HEX = re.compile(r"[0-9a-f]{128}")
# Hashing on the host reads the file; allow 20 MiB/s on a slow host's disk.
HASH_RATE = 20 * MiB


@dataclass(frozen=True)
class Staged:
    """A migration's file in the staging area: ``sha512`` is set once the whole
    file was verified (it is then named ``<migration id>.<sha512>``)."""

    path: str
    size: int
    sha512: str | None


class StagingArea:
    """The site's ``staging_dir`` on the external host (relative to the login
    user's home unless absolute), created on first use, mode 0700.

    A migration's upload is ``<migration id>.part`` until its sha512 has been
    checked on the host; then it is renamed to ``<migration id>.<sha512>``, so
    registering (and a resumed run) knows it is complete without hashing it again.
    """

    def __init__(self, host: RemoteHost, staging_dir: str) -> None:
        self.host = host
        self.staging_dir = staging_dir
        self.hashes = RemoteHashes(host)
        # The ``ssh`` binary that carries the bytes; None: paramiko's SFTP does.
        self.openssh: str | None = stream.openssh_client()
        self._directory: str | None = None

    def find(self, migration_id: str) -> Staged | None:
        """The migration's staged file, verified one first; None if there is none."""
        found = self._files(migration_id)
        found.sort(key=lambda staged: staged.sha512 is None)
        return found[0] if found else None

    def remove(self, migration_id: str) -> None:
        """Remove the migration's staged files; already gone is fine."""
        sftp = self.host.sftp()
        for staged in self._files(migration_id):
            with self.host.translated(f"remove {staged.path}"), suppress(FileNotFoundError):
                sftp.remove(staged.path)

    def prepare(self) -> str:
        """Make sure the staging directory exists; return its absolute path."""
        return self._ensure_directory()

    def upload(self, migration_id: str, transfer: Transfer) -> str:
        """Stage the payload, resuming an interrupted upload where the host's bytes
        still match; return the staged file's sha512, computed on the host."""
        staged = self.find(migration_id)
        if staged is not None and staged.sha512:
            if transfer.sha512 in (None, staged.sha512):
                return staged.sha512
            self.remove(migration_id)
        path = self._path(f"{migration_id}.part")
        journal = Journal.load(transfer.load_state(), path, transfer.size)
        # Without the payload's sha512 only an upload from byte 0 can be checked
        # (this side hashes what it sends).
        offset = self._resume_point(journal) if transfer.sha512 else 0
        if offset == 0:
            journal.keep(0)
        journal.attempts.append(offset)
        if offset:
            log.info("resuming the upload to %s at byte %d", path, offset)
        local = hashlib.sha512() if transfer.sha512 is None else None
        length, digest = self._write(journal, transfer, offset, local)
        transfer.save_state(journal.state())

        expected = transfer.sha512 or (local.hexdigest() if local else None)
        if digest is None or (digest.size, digest.hashed, digest.sha512) != (
            length,
            length,
            expected,
        ):
            self.remove(migration_id)
            transfer.save_state({})
            held = "nothing" if digest is None else f"{digest.size} bytes of another sha512"
            problem = f"{path} holds {held} after {length} bytes were sent; removed"
            # From byte 0 the payload was verified on this side: the host changed it.
            kind = TransientError if offset else IntegrityError
            raise kind(self.host.message("verify the upload", problem))
        final = self._path(f"{migration_id}.{digest.sha512}")
        sftp = self.host.sftp()
        with self.host.translated(f"rename {path}"):
            sftp.posix_rename(path, final)
        return digest.sha512

    # -- parts ----------------------------------------------------------------

    def _write(
        self, journal: Journal, transfer: Transfer, offset: int, local: Any | None
    ) -> tuple[int, Digest | None]:
        """Send the payload from ``offset``; return the file's length and what the
        host's hasher, which followed the file as it grew, found."""
        path = journal.path
        sink = self._sink(path, offset)
        try:
            saved = time.monotonic()
            done = offset
            for chunk in transfer.chunks(offset):
                sink.write(chunk)
                journal.add(chunk)
                done += len(chunk)
                faults.point("ssh.sftp_bytes", amount=done)
                if local is not None:
                    local.update(chunk)
                now = time.monotonic()
                if now - saved >= SAVE_INTERVAL_SECONDS:
                    saved = now
                    transfer.save_state(journal.state())
                    transfer.progress(done)
            journal.settle()
            timeout = self.host.settings.timeout + done / HASH_RATE
            with stall.waiting():  # the host's hasher catching up: bounded by ``timeout``
                return done, sink.finish(done, timeout)
        except BaseException:
            # Stopped (shutdown, cancel, a failed read or write): what was sent is
            # claimed for the next run, which checks the claim against the host.
            sink.stop()
            with suppress(Exception):
                journal.settle()
                transfer.save_state(journal.state())
            raise
        finally:
            sink.close()

    def _sink(self, path: str, offset: int) -> _Sink:
        """OpenSSH's client when this machine has one, else paramiko's SFTP."""
        if self.openssh is not None:
            problem = stream.unusable(self.host)
            if problem is None:
                return _Streamed(stream.StreamedUpload(self.openssh, self.host, path, offset))
            log.warning(
                "site %s: uploading over paramiko's SFTP (slower), not ssh: %s",
                self.host.site_id,
                problem,
            )
            self.openssh = None
        return _Sftp(self, path, offset)

    def _resume_point(self, journal: Journal) -> int:
        """Where to continue: after the last recorded block the host still holds."""
        if not journal.blocks:
            return 0
        with stall.waiting():  # the host hashes what it holds: bounded by the timeout
            held = self.hashes.blocks(
                journal.path,
                journal.block_size,
                len(journal.blocks),
                timeout=self.host.settings.timeout
                + len(journal.blocks) * journal.block_size / HASH_RATE,
            )
        if held is None:
            return 0
        size, remote = held
        matched = 0
        for mine, theirs in zip(journal.blocks, remote, strict=False):
            if mine != theirs:
                break
            matched += 1
        journal.keep(matched)
        offset = matched * journal.block_size
        if offset and size != offset:
            sftp = self.host.sftp()
            with self.host.translated(f"truncate {journal.path}"):
                sftp.truncate(journal.path, offset)
        return offset

    def _files(self, migration_id: str) -> list[Staged]:
        """The migration's files; a lookup creates nothing on the host."""
        sftp = self.host.sftp()
        prefix = f"{migration_id}."
        found = []
        with self.host.translated(f"list the staging directory {self.staging_dir!r}"):
            try:
                directory = self._directory or sftp.normalize(self.staging_dir)
                entries = sftp.listdir_attr(directory)
            except FileNotFoundError:
                return []
            for entry in entries:
                name = entry.filename
                if not name.startswith(prefix):
                    continue
                suffix = name[len(prefix) :]
                sha512 = suffix if SHA512_HEX.fullmatch(suffix) else None
                if sha512 is None and suffix != "part":
                    continue
                found.append(Staged(posixpath.join(directory, name), entry.st_size or 0, sha512))
        return found

    def _path(self, name: str) -> str:
        return posixpath.join(self._ensure_directory(), name)

    def _ensure_directory(self) -> str:
        if self._directory is not None:
            return self._directory
        sftp = self.host.sftp()
        with self.host.translated(f"create the staging directory {self.staging_dir!r}"):
            for prefix in _prefixes(self.staging_dir):
                try:
                    sftp.stat(prefix)
                except FileNotFoundError:
                    sftp.mkdir(prefix, 0o700)
            self._directory = sftp.normalize(self.staging_dir)
        return self._directory


def _prefixes(path: str) -> Iterator[str]:
    """``a/b/c`` → ``a``, ``a/b``, ``a/b/c`` (absolute paths keep their root)."""
    parts = [part for part in path.split("/") if part and part != "."]
    root = "/" if path.startswith("/") else ""
    for index in range(1, len(parts) + 1):
        yield root + "/".join(parts[:index])


class _Sink(Protocol):
    def write(self, chunk: bytes) -> None: ...
    def finish(self, length: int, timeout: float) -> Digest | None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class _Streamed:
    """The bytes through ``ssh`` to a writer that hashes them on the host."""

    def __init__(self, upload: stream.StreamedUpload) -> None:
        self.upload = upload

    def write(self, chunk: bytes) -> None:
        self.upload.write(chunk)

    def finish(self, length: int, timeout: float) -> Digest | None:
        return self.upload.finish(timeout)

    def stop(self) -> None:
        self.upload.kill()

    def close(self) -> None:
        self.upload.close()


class _Sftp:
    """paramiko's pipelined SFTP writes, and the host's hasher following the file."""

    def __init__(self, area: StagingArea, path: str, offset: int) -> None:
        self.host, self.hashes, self.path = area.host, area.hashes, path
        self.action = f"upload to {path}"
        with self.host.translated(self.action):
            self.remote = self.host.sftp().open(path, "r+b" if offset else "wb", bufsize=0)
        try:
            with self.host.translated(self.action):
                if not offset:
                    self.remote.chmod(0o600)
                self.remote.MAX_REQUEST_SIZE = self.host.write_size
                self.remote.set_pipelined(True)
                self.remote.seek(offset)
            # Started once the file exists at its new length, so it never reads
            # what an earlier attempt left beyond the resume point.
            self.follower = self.hashes.follow(path)
        except BaseException:
            with suppress(Exception):
                self.remote.close()
            raise

    def write(self, chunk: bytes) -> None:
        with self.host.translated(self.action):
            self.remote.write(chunk)

    def finish(self, length: int, timeout: float) -> Digest | None:
        with self.host.translated(self.action):
            self.remote.close()  # returns once every pipelined write has landed
        return self.hashes.finished(self.follower, self.path, length, timeout)

    def stop(self) -> None:
        with suppress(Exception):
            self.remote.close()

    def close(self) -> None:
        self.follower.close()
