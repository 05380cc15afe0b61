"""The staging file's bytes through OpenSSH's own client: ``ssh`` runs one fixed
Python program on the host (``host_writer``) that writes its stdin to the file
and hashes it with sha512 as it goes.

Why: paramiko does Python work for every 32 KiB SSH packet, which made an upload
~1.2 times ``scp``'s time; the ``ssh`` binary moves the bytes in C, and the writer
hashes what it writes (no second read of the file on the host). paramiko still
does everything else (listing, resume hashes, rename, the CLI).

The client is started from an argv list (no local shell) with no configuration
file but its options: key login only, the site's known_hosts pinned
(``StrictHostKeyChecking=yes``: the key paramiko checked, or recorded on first
use, before this runs), no agent, no forwarding. The remote command is
``shlex.join`` over the program and two arguments we generate (the path and the
offset); the program reads nothing else.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import IO

from migratio.drivers.ssh import host_writer
from migratio.drivers.ssh.hashes import Digest
from migratio.drivers.ssh.remote import RemoteHost
from migratio.errors import PermanentError, TransientError

MiB = 1024 * 1024
# Linux: a 1 MiB pipe (the unprivileged maximum) means fewer, larger copies.
PIPE_SIZE = MiB
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
# OpenSSH expands ``%`` and ``~`` in these paths and splits -o values on spaces.
PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+@:=,-]+")
OUTPUT_LIMIT = 64 * 1024


@functools.cache
def remote_writer() -> str:
    """The program that writes the file on the host, sent as text (``python3 -c``):
    read on the first upload, not whenever the driver is imported."""
    return Path(host_writer.__file__).read_text()


def openssh_client() -> str | None:
    """The ``ssh`` binary, if this machine has one."""
    return shutil.which("ssh")


def unusable(host: RemoteHost) -> str | None:
    """Why ``ssh`` cannot take the site's files as they are (None: it can): OpenSSH
    expands ``%`` and ``~`` in these paths and ignores a key others may read."""
    settings = host.settings
    for path in (settings.key_file, settings.known_hosts):
        if not PLAIN_PATH.fullmatch(str(path)):
            return f"{path} is not a plain path"
    try:
        key = settings.key_file.stat()
    except OSError as exc:
        return f"{settings.key_file}: {exc.strerror}"
    # OpenSSH's own rule (sshkey_perm_ok): a key of ours that others may read.
    if key.st_uid == os.getuid() and key.st_mode & 0o077:
        return f"{settings.key_file} can be read by others than its owner"
    return None


def ssh_argv(client: str, host: RemoteHost, remote_argv: list[str]) -> list[str]:
    """The client's argv: every option given here, none read from a file."""
    settings = host.settings
    keepalive = max(1, int(settings.read_timeout // 3))
    options = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(settings.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "ControlMaster": "no",
        "ControlPath": "none",
        "RequestTTY": "no",
        "EscapeChar": "none",
        "Compression": "no",
        "LogLevel": "ERROR",
        "Ciphers": CIPHERS,
        "ConnectTimeout": str(max(1, int(settings.connect_timeout))),
        # A host that stops answering ends the client within ~read_timeout.
        "ServerAliveInterval": str(keepalive),
        "ServerAliveCountMax": "3",
    }
    argv = [client, "-F", "/dev/null", "-i", str(settings.key_file)]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    argv += ["-p", str(settings.port), "-l", settings.user, "--", settings.host]
    return [*argv, shlex.join(remote_argv)]


class StreamedUpload:
    """One ``ssh`` process writing ``path`` from ``offset``: ``write`` the bytes,
    then ``finish`` for the host's digest; ``kill`` (any thread) stops it."""

    def __init__(self, client: str, host: RemoteHost, path: str, offset: int) -> None:
        self.host = host
        self.path = path
        self.action = f"upload to {path}"
        remote = ["python3", "-I", "-c", remote_writer(), path, str(offset)]
        self._stdout: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (see close)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            # Files, not pipes, for its output: nothing the host prints can fill
            # a pipe and stall the upload. Its own session: a Ctrl-C meant for
            # the daemon does not cut the stream under it.
            self._process = subprocess.Popen(
                ssh_argv(client, host, remote),
                stdin=subprocess.PIPE,
                stdout=self._stdout,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_files()
            raise TransientError(host.message(self.action, f"cannot run {client}: {exc}")) from None
        assert self._process.stdin is not None
        self._stdin = self._process.stdin.fileno()
        with suppress(OSError):
            fcntl.fcntl(self._stdin, host_writer.F_SETPIPE_SZ, PIPE_SIZE)
        host.track(self)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._stdin, view) :]
        except OSError:
            self._failed()

    def finish(self, timeout: float) -> Digest | None:
        """Close the stream and wait for the writer's answer."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
        except OSError:
            self._failed()
        try:
            status = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TransientError(
                self.host.message(self.action, "the host did not confirm the upload in time")
            ) from None
        if status != 0:
            self._failed()
        answer = _json(self._read(self._stdout))
        if not isinstance(answer, dict) or "sha512" not in answer:
            raise PermanentError(self.host.message(self.action, "unexpected output"))
        return Digest(int(answer["size"]), int(answer["hashed"]), str(answer["sha512"]))

    def kill(self) -> None:
        with suppress(OSError):
            self._process.kill()

    def close(self) -> None:
        """Stop the client if it still runs; release everything."""
        if self._process.poll() is None:
            self.kill()
        with suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        with suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        self.host.untrack(self)
        self._close_files()

    # -- parts ----------------------------------------------------------------

    def _failed(self) -> None:
        """Raise what the client or the writer said, once the client ended."""
        with suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        status = self._process.returncode
        said = " ".join(self._read(self._stderr).decode("utf-8", "replace").split())[-300:]
        problem = said or f"ssh ended with status {status}"
        if status == host_writer.REFUSED or (status == 255 and _refused(said)):
            raise PermanentError(self.host.message(self.action, problem))
        raise TransientError(self.host.message(self.action, problem))

    def _read(self, handle: IO[bytes]) -> bytes:
        with suppress(OSError):
            handle.seek(0)
            return handle.read(OUTPUT_LIMIT)
        return b""

    def _close_files(self) -> None:
        self._stdout.close()
        self._stderr.close()


def _refused(said: str) -> bool:
    """The client's own refusals: retrying with the same settings cannot help."""
    return any(
        text in said
        for text in ("Host key verification failed", "Permission denied", "UNPROTECTED")
    )


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None
