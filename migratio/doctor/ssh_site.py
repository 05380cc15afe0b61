"""An SSH site: the host key known and matching, key login, the remote
``openstack`` CLI running and authenticating, and the staging dir writable.

Doctor never trusts an unknown host key, whatever ``accept_unknown_host_key``
says: it looks at the key before logging in (and logs in only through the
driver's own ``RemoteHost``, with unknown keys refused), so nothing is recorded
in known_hosts and no credential is offered to a host that is not the known one.
"""

from __future__ import annotations

import posixpath
import shlex
import socket
import uuid
from contextlib import suppress

import paramiko

from migratio.config import OpenStackSshSite
from migratio.doctor.result import Check, Verdict, fail, ok, warn
from migratio.doctor.runner import Chain, client_timeout
from migratio.drivers.ssh.keys import fingerprint, reason
from migratio.drivers.ssh.remote import Completed, RemoteHost
from migratio.errors import MigratioError

GIB = 1 << 30


def chain(site_id: str, settings: OpenStackSshSite, timeout: float) -> Chain:
    probe = SshProbe(site_id, settings, client_timeout(settings.timeout, timeout))
    name = f"site {site_id}"
    return Chain(
        name,
        [
            Check(f"{name}: host key", probe.host_key),
            Check(f"{name}: login", probe.login),
            Check(f"{name}: openstack CLI", probe.openstack_cli),
            Check(f"{name}: list images", probe.list_images, gate=False),
            Check(f"{name}: staging dir", probe.staging_dir, gate=False),
        ],
        close=probe.close,
    )


class SshProbe:
    """The checks of one SSH site, sharing one connection, in order."""

    def __init__(self, site_id: str, settings: OpenStackSshSite, timeout: float) -> None:
        self.site_id = site_id
        # Refuse unknown keys even if the site accepts them: doctor records nothing.
        self.settings = settings.model_copy(
            update={"accept_unknown_host_key": False, "timeout": timeout}
        )
        self.accepts_unknown = settings.accept_unknown_host_key
        self.timeout = timeout
        self.host = RemoteHost(site_id, self.settings)

    def host_key(self) -> Verdict:
        address = self.host.address
        known_hosts = self.settings.known_hosts
        known = paramiko.HostKeys()
        try:
            known.load(str(known_hosts))
        except FileNotFoundError:
            pass
        except (OSError, paramiko.SSHException) as exc:
            return fail(f"cannot read known_hosts {known_hosts}: {reason(exc)}")
        listed: dict[str, paramiko.PKey] = dict(known.lookup(address) or {})
        offered = self._server_key(list(listed))
        shown = fingerprint(offered)
        expected = listed.get(offered.get_name())
        if expected is None:
            unknown = f"{address} offers {shown}, which known_hosts {known_hosts} does not list"
            if self.accepts_unknown:
                return warn(
                    f"{unknown}; the daemon will trust it on first connection "
                    "(accept_unknown_host_key), doctor does not",
                    halts=True,
                )
            return fail(f"{unknown}: migratio refuses to connect (add the host's key there)")
        if expected != offered:
            return fail(
                f"the host key of {address} has CHANGED: known_hosts {known_hosts} lists "
                f"{fingerprint(expected)}, the server offers {shown}"
            )
        return ok(f"{address} offers {shown}, as known_hosts {known_hosts} lists")

    def login(self) -> Verdict:
        sftp = self.host.sftp()
        channel = sftp.get_channel()
        transport = channel.get_transport() if channel is not None else None
        server = f" ({transport.remote_version})" if transport is not None else ""
        user, key = self.settings.user, self.settings.key_file
        return ok(f"{user}@{self.host.address}{server} accepts the key {key}")

    def openstack_cli(self) -> Verdict:
        done = self._openstack(["token", "issue", "-f", "value", "-c", "expires"], "get a token")
        if done.status != 0:
            return fail(self._failed(done))
        expires = done.stdout.decode("utf-8", errors="replace").strip()
        return ok(
            f"{self.settings.openstack_command} authenticates to cloud {self.settings.cloud!r} "
            f"(token expires {expires})"
        )

    def list_images(self) -> Verdict:
        done = self._openstack(["image", "list", "--limit", "1", "-f", "value", "-c", "ID"], "list")
        if done.status != 0:
            return fail(self._failed(done))
        return ok("the account can list images")

    def staging_dir(self) -> Verdict:
        """Writable if a probe file can be made in it (or, while it does not exist
        yet, in the directory it will be created in); the probe is removed at once."""
        sftp = self.host.sftp()
        directory = self.settings.staging_dir
        with self.host.translated("check the staging dir"):
            existing = directory
            while True:
                try:
                    sftp.stat(existing)
                    break
                except FileNotFoundError:
                    parent = posixpath.dirname(existing.rstrip("/"))
                    existing = parent or "."
            where = sftp.normalize(existing)
            probe = posixpath.join(where, f".migratio-doctor-{uuid.uuid4().hex}")
            try:
                with sftp.open(probe, "wx") as file:
                    file.write(b"probe")
            except PermissionError:
                return fail(f"{where} is not writable for {self.settings.user}")
            finally:
                with suppress(OSError):
                    sftp.remove(probe)
        free = self._free_space(where)
        if existing != directory:
            return ok(
                f"{directory} does not exist yet; {where}, where the first upload creates it, "
                f"is writable{free}"
            )
        return ok(f"{where} is writable{free}")

    def close(self) -> None:
        self.host.close()

    def _server_key(self, known_types: list[str]) -> paramiko.PKey:
        """The key the server offers, preferring a type known_hosts lists (as
        OpenSSH and paramiko's client do), without authenticating."""
        with self.host.translated("get the host key"):
            sock = socket.create_connection((self.settings.host, self.settings.port), self.timeout)
            transport = paramiko.Transport(sock)
            try:
                if known_types:
                    options = transport.get_security_options()
                    offered = list(options.key_types)
                    options.key_types = [
                        *(kind for kind in known_types if kind in offered),
                        *(kind for kind in offered if kind not in known_types),
                    ]
                transport.banner_timeout = self.timeout
                transport.start_client(timeout=self.timeout)
                return transport.get_remote_server_key()
            finally:
                transport.close()

    def _openstack(self, argv: list[str], action: str) -> Completed:
        command = [*shlex.split(self.settings.openstack_command), "--os-cloud", self.settings.cloud]
        return self.host.run([*command, *argv], f"openstack CLI: {action}")

    def _failed(self, done: Completed) -> str:
        if done.status in (126, 127):
            return f"cannot run {self.settings.openstack_command}: {done.error_text()}"
        return f"openstack CLI (exit {done.status}): {done.error_text()}"

    def _free_space(self, path: str) -> str:
        """``, N GiB free`` from the host's ``df``, or nothing if it cannot say."""
        try:
            done = self.host.run(["df", "-Pk", path], "measure free space")
            available = int(done.stdout.decode().splitlines()[-1].split()[3]) * 1024
        except (MigratioError, ValueError, IndexError, UnicodeDecodeError):
            return ""
        return f", {available / GIB:.1f} GiB free"
