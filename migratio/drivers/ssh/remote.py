"""An SSH connection to a site's external host: host key checked (``ssh_keys``), key login,
commands run from quoted argv only, and SFTP.

The legacy tool interpolated image names into remote shell commands and never
checked host keys. Here a command is only ever built by ``shlex.join`` over an
argument vector, so every argument reaches the remote program as one word,
whatever it contains; this assumes a POSIX login shell on the external host
(sh, bash, dash, zsh), which is what sshd hands the command to.
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import paramiko

from migratio.config import OpenStackSshSite
from migratio.drivers.ssh.keys import HostKeys, private_key, reason
from migratio.errors import MigratioError, PermanentError, TransientError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# paramiko's defaults (2 MiB window, aes-ctr + HMAC, 32 KiB SFTP writes) move
# ~100 MiB/s on loopback. AES-GCM (no separate MAC pass) and OpenSSH's largest
# SFTP write (sftp-server takes messages up to 256 KiB) more than double it.
WINDOW_SIZE = 16 * MiB
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
OPENSSH_WRITE_SIZE = 256 * 1024 - 1024
# What every SFTP server must accept (draft-ietf-secsh-filexfer-02, section 3).
PORTABLE_WRITE_SIZE = 32 * 1024
# Remote command output is JSON about a few images; anything bigger is an error.
OUTPUT_LIMIT = 16 * MiB
# Runs a command so that it ends with the SSH session: sshd does not signal a
# command without a terminal when the client goes away, so an `openstack image
# create` would go on creating an image for a daemon that was killed. This
# wrapper (given the command as argv) waits for end of file on its stdin, which
# the client never closes, and then stops the command's process group.
SESSION_BOUND = """\
import os, signal, subprocess, sys, threading
try:
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)
except OSError as exc:
    sys.stderr.write("cannot run %s: %s\\n" % (sys.argv[1], exc.strerror))
    sys.exit(127)
def stop_on_hangup():
    while os.read(0, 4096):
        pass
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except OSError:
        pass
threading.Thread(target=stop_on_hangup, daemon=True).start()
status = child.wait()
sys.exit(status if status >= 0 else 128 - status)
"""


@dataclass(frozen=True)
class Completed:
    """A finished remote command."""

    argv: tuple[str, ...]
    status: int
    stdout: bytes
    stderr: bytes

    def error_text(self, limit: int = 300) -> str:
        """The last line of stderr (or stdout), for one-line error messages."""
        text = (self.stderr or self.stdout).decode("utf-8", errors="replace").strip()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {self.status}"
        return last if len(last) <= limit else last[: limit - 3] + "..."


class RunningCommand:
    """A remote command still running: write to its stdin, then ``finish``.
    Closing it early closes the command's stdin (it sees end of file)."""

    def __init__(
        self, host: RemoteHost, channel: paramiko.Channel, argv: tuple[str, ...], action: str
    ) -> None:
        self._host = host
        self._channel = channel
        self.argv = argv
        self.action = action

    def finish(
        self, stdin: bytes = b"", timeout: float | None = None, *, close_stdin: bool = True
    ) -> Completed:
        """Send ``stdin`` (and close it, unless told not to) and wait for the exit
        status; a non-zero status is returned, not raised (the caller knows what
        it means)."""
        limit = self._host.settings.timeout if timeout is None else timeout
        with self._host.translated(self.action):
            if stdin:
                self._channel.sendall(stdin)
            if close_stdin:
                self._channel.shutdown_write()
            stdout, stderr = _drain(self._channel, time.monotonic() + limit, self.action)
            status = self._channel.recv_exit_status()
        return Completed(self.argv, status, stdout, stderr)

    def close(self) -> None:
        self._channel.close()


class RemoteHost:
    """The external host of one ``openstack-ssh`` site.

    site_id: named in every error message.
    settings: ``host``, ``port``, ``user``, ``key_file`` (a private key without a
        passphrase), ``known_hosts`` (OpenSSH format; ``[host]:port`` entries for
        ports other than 22), ``accept_unknown_host_key`` (record a first-seen
        key instead of refusing; a *changed* key is refused regardless),
        ``connect_timeout`` (TCP connect and the server's banner),
        ``read_timeout`` (authentication, opening a channel, and each read or
        write on a channel: SFTP and commands alike), ``timeout`` (each remote
        command as a whole, unless it says otherwise).

    Connects on first use and again after the connection dropped. ``abort``
    cuts the connection from another thread.
    """

    def __init__(self, site_id: str, settings: OpenStackSshSite) -> None:
        self.site_id = site_id
        self.settings = settings
        self._lock = threading.Lock()
        self._host_keys = HostKeys(site_id, settings)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._socket: socket.socket | None = None
        # Byte streams run by other means (``ssh_stream``): ``abort`` stops them too.
        self._streams: set[Any] = set()

    @property
    def address(self) -> str:
        """The host's name in known_hosts (OpenSSH writes ``[host]:port`` off port 22)."""
        host, port = self.settings.host, self.settings.port
        return host if port == 22 else f"[{host}]:{port}"

    # -- commands -------------------------------------------------------------

    def run(self, argv: Sequence[str], action: str, *, timeout: float | None = None) -> Completed:
        """Run ``argv`` on the host and wait for it; it is stopped if the connection
        ends first (or the timeout passes). A non-zero status is returned, not
        raised (the caller knows what it means)."""
        running = self.start(["python3", "-I", "-c", SESSION_BOUND, *argv], action)
        try:
            done = running.finish(timeout=timeout, close_stdin=False)
        finally:
            running.close()
        return Completed(tuple(argv), done.status, done.stdout, done.stderr)

    def start(self, argv: Sequence[str], action: str) -> RunningCommand:
        """Start ``argv`` on the host with its stdin open (see ``RunningCommand``)."""
        command = shlex.join(argv)
        with self.translated(action):
            channel = self._transport().open_session(timeout=self.settings.read_timeout)
            try:
                # No send or receive may wait longer on a host that stopped answering.
                channel.settimeout(self.settings.read_timeout)
                channel.exec_command(command)
            except BaseException:
                channel.close()
                raise
        return RunningCommand(self, channel, tuple(argv), action)

    # -- files ----------------------------------------------------------------

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, opened once."""
        with self.translated("open an SFTP session"):
            transport = self._transport()
            with self._lock:
                sftp = self._sftp
                current = sftp.get_channel() if sftp is not None else None
                if sftp is None or current is None or current.closed:
                    sftp = paramiko.SFTPClient.from_transport(transport)
                    channel = sftp.get_channel() if sftp is not None else None
                    if sftp is None or channel is None:
                        raise TransientError(self.message("open an SFTP session", "refused"))
                    # A host that stops answering must not hang a write or a close.
                    channel.settimeout(self.settings.read_timeout)
                    self._sftp = sftp
                return sftp

    @property
    def write_size(self) -> int:
        """The largest SFTP write request this host's server is known to take."""
        version = self._transport().remote_version
        return OPENSSH_WRITE_SIZE if "OpenSSH" in version else PORTABLE_WRITE_SIZE

    def close(self) -> None:
        with self._lock:
            client, self._client, self._sftp = self._client, None, None
        if client is not None:
            client.close()

    def abort(self) -> None:
        """Cut the connection (any thread; never blocks, takes no lock): paramiko's
        transport thread sees end of file and ends, and every call waiting on one
        of its channels fails; the next call connects again. Streams are killed."""
        for stream in list(self._streams):
            stream.kill()
        sock = self._socket
        if sock is not None:
            with suppress(OSError):  # not connected (any more)
                sock.shutdown(socket.SHUT_RDWR)

    def track(self, stream: Any) -> None:
        """Have ``abort`` call ``stream.kill()`` until ``untrack``."""
        self._streams.add(stream)

    def untrack(self, stream: Any) -> None:
        self._streams.discard(stream)

    # -- errors ---------------------------------------------------------------

    @contextmanager
    def translated(self, action: str) -> Iterator[None]:
        """Turn paramiko and socket failures into typed, one-line errors. A lost
        connection is dropped, so the next call connects again."""
        try:
            yield
        except MigratioError:
            raise
        except paramiko.AuthenticationException as exc:
            raise PermanentError(
                self.message(
                    action,
                    f"{self.settings.user}@{self.address} refused the key "
                    f"{self.settings.key_file} ({reason(exc)})",
                )
            ) from None
        except (TimeoutError, paramiko.SSHException, EOFError, ConnectionError) as exc:
            self.close()
            raise TransientError(self.message(action, reason(exc))) from None
        except PermissionError as exc:
            raise PermanentError(self.message(action, reason(exc))) from None
        except OSError as exc:
            if self._client is not None and not self._is_active():
                self.close()
            raise TransientError(self.message(action, reason(exc))) from None

    def message(self, action: str, problem: str) -> str:
        return " ".join(f"site {self.site_id}: {action}: {problem}".split())

    # -- connection -----------------------------------------------------------

    def _is_active(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._client is None or not self._is_active():
                if self._client is not None:
                    self._client.close()
                self._client, self._sftp = None, None
                self._client = self._connect()
            transport = self._client.get_transport()
            assert transport is not None
            return transport

    def _connect(self) -> paramiko.SSHClient:
        settings = self.settings
        key = private_key(self.site_id, settings)
        client = paramiko.SSHClient()
        self._host_keys.prepare(client)
        log.debug("site %s: connecting to %s@%s", self.site_id, settings.user, self.address)
        sock: socket.socket | None = None
        try:
            # Opened here, not by paramiko, so that ``abort`` can reach it.
            sock = socket.create_connection(
                (settings.host, settings.port), timeout=settings.connect_timeout
            )
            self._socket = sock
            client.connect(
                settings.host,
                port=settings.port,
                username=settings.user,
                pkey=key,
                allow_agent=False,
                look_for_keys=False,
                sock=sock,
                timeout=settings.connect_timeout,
                banner_timeout=settings.connect_timeout,
                auth_timeout=settings.read_timeout,
                channel_timeout=settings.read_timeout,
                transport_factory=_tuned_transport,
            )
        except paramiko.BadHostKeyException as exc:
            _close(client, sock)
            raise self._host_keys.changed(self.address, exc) from None
        except BaseException:
            _close(client, sock)
            raise
        return client


def _close(client: paramiko.SSHClient, sock: socket.socket | None) -> None:
    client.close()
    if sock is not None:
        sock.close()


def _tuned_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, **kwargs)
    options = transport.get_security_options()
    ciphers = tuple(options.ciphers)
    options.ciphers = (
        *(c for c in PREFERRED_CIPHERS if c in ciphers),
        *(c for c in ciphers if c not in PREFERRED_CIPHERS),
    )
    return transport


def _drain(channel: paramiko.Channel, deadline: float, action: str) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the command exits (both, so neither can fill
    the window and stall the other)."""
    stdout, stderr = bytearray(), bytearray()
    while True:
        while channel.recv_ready():
            stdout += channel.recv(65536)
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        if len(stdout) + len(stderr) > OUTPUT_LIMIT:
            raise PermanentError(f"{action}: more than {OUTPUT_LIMIT} bytes of output")
        if channel.exit_status_ready() and not (
            channel.recv_ready() or channel.recv_stderr_ready()
        ):
            return bytes(stdout), bytes(stderr)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the remote command did not finish in time")
        select.select([channel], [], [], min(remaining, 0.2))
