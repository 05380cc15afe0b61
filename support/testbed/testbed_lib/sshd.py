"""A private OpenSSH server on loopback: the "external host" of an SSH site.

Its own config, host key and authorized key, all in DIR/sshd; it lets the
current user in by key only. Sessions get ``OS_CLIENT_CONFIG_FILE`` pointing at
the bed's clouds.yaml (sshd's ``SetEnv``), so that user's ``openstack`` CLI
reaches site-b, as an operator's external host would. They also get ``SHLVL=1``:
Debian's bash sources ~/.bashrc for a command sshd runs only when it is a
top-level shell, and this machine's user's ~/.bashrc (pyenv's init, say) is not
the external host's; it cost ~0.2 s per remote command, and the pyenv shim it put
first on PATH another ~0.1 s for each ``python3`` the driver runs there. The site file
``site-b-ssh`` names the client key and a known_hosts file with the host key.
"""

import getpass
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import files, processes
from .errors import TestbedError
from .processes import Server

SSHD = "/usr/sbin/sshd"
# sshd refuses to start without its privilege separation directory, which the
# package's service unit would create; nothing here runs that unit.
PRIVSEP_DIR = Path("/run/sshd")
SSH_SITE = "site-b-ssh"
SSH_CLOUD = "site-b"
# Debian's CLI by absolute path: an `openstack` earlier on the login PATH (a
# pyenv shim, say) must not stand in for it.
OPENSTACK_COMMAND = "/usr/bin/openstack"


@dataclass(frozen=True)
class SshdLayout:
    """Where the server keeps its keys, config and the staging area, and its port."""

    dir: Path
    logs: Path
    port: int

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def staging_dir(self) -> Path:
        return self.dir / "staging"

    @property
    def log(self) -> Path:
        return self.logs / "sshd.log"


def configure(layout: SshdLayout, clouds_yaml: Path) -> None:
    """Keys, authorized_keys, known_hosts and sshd_config."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    setup_log = layout.logs / "sshd-setup.log"
    for key, comment in ((layout.host_key, "testbed-host"), (layout.client_key, "testbed-client")):
        for stale in (key, key.with_name(key.name + ".pub")):
            stale.unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
        processes.run(argv, setup_log, what="ssh-keygen")
    client_public = layout.client_key.with_name(layout.client_key.name + ".pub").read_text()
    files.write_private(layout.authorized_keys, client_public)
    host_public = layout.host_key.with_name(layout.host_key.name + ".pub").read_text().split()
    layout.known_hosts.write_text(f"[127.0.0.1]:{layout.port} {host_public[0]} {host_public[1]}\n")
    settings = {
        "ListenAddress": "127.0.0.1",
        "Port": layout.port,
        "HostKey": layout.host_key,
        "PidFile": "none",
        "AuthorizedKeysFile": layout.authorized_keys,
        "AuthenticationMethods": "publickey",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "prohibit-password",
        "AllowUsers": getpass.getuser(),
        # The bed's files live under a temp dir whose modes sshd would refuse.
        "StrictModes": "no",
        "UsePAM": "no",
        "X11Forwarding": "no",
        "AllowTcpForwarding": "no",
        "AllowAgentForwarding": "no",
        "PrintMotd": "no",
        "MaxStartups": "100",
        "MaxSessions": "100",
        "Subsystem": "sftp internal-sftp",
        # SHLVL=1: the login shell counts itself as nested, so it reads no ~/.bashrc.
        "SetEnv": f"OS_CLIENT_CONFIG_FILE={clouds_yaml} SHLVL=1",
        "LogLevel": "VERBOSE",
    }
    layout.config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))


def start(layout: SshdLayout, mark: str, timeout: float = 30.0) -> Server:
    """Start ``sshd -D`` on the layout's port; return once it sends its banner."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    argv = [SSHD, "-D", "-e", "-f", str(layout.config)]
    server = processes.spawn("sshd", argv, layout.log, mark=mark)
    deadline = time.monotonic() + timeout
    while not _answers(layout.port):
        if not processes.is_running(server):
            raise TestbedError(f"sshd exited while starting; read {layout.log}")
        if time.monotonic() > deadline:
            raise TestbedError(f"sshd not ready on port {layout.port}; read {layout.log}")
        time.sleep(0.05)
    return server


def write_site_file(layout: SshdLayout, sites_dir: Path) -> Path:
    """``sites/site-b-ssh.yml``: site-b, reached through this server."""
    path = sites_dir / f"{SSH_SITE}.yml"
    files.write_yaml(
        path,
        {
            "type": "openstack-ssh",
            "host": "127.0.0.1",
            "port": layout.port,
            "user": getpass.getuser(),
            "key_file": str(layout.client_key),
            "known_hosts": str(layout.known_hosts),
            "cloud": SSH_CLOUD,
            "staging_dir": str(layout.staging_dir),
            "openstack_command": OPENSTACK_COMMAND,
        },
    )
    return path


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False
