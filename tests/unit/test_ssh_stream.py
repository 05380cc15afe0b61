"""The ``ssh`` command line that carries an SSH site's bytes: the site's pinned
known_hosts and key only, nothing read from a config file, and a remote command
whose every argument reaches the host's program as one word."""

from __future__ import annotations

import shlex
from pathlib import Path

from migratio.config import OpenStackSshSite
from migratio.drivers.ssh.remote import RemoteHost
from migratio.drivers.ssh.stream import ssh_argv, unusable


def host(tmp_path: Path, **changes: object) -> RemoteHost:
    key = tmp_path / "id_ed25519"
    key.write_text("not read here")
    key.chmod(0o600)
    raw = {
        "type": "openstack-ssh",
        "host": "-oProxyCommand=evil",
        "port": 2222,
        "user": "migratio",
        "key_file": str(key),
        "known_hosts": str(tmp_path / "known_hosts"),
        "cloud": "c",
        **changes,
    }
    return RemoteHost("site-c", OpenStackSshSite.model_validate(raw))


def test_the_client_pins_the_sites_host_key_and_takes_no_option_from_elsewhere(
    tmp_path: Path,
) -> None:
    remote = ["python3", "-c", "print(1)", "/st a'ge/$(x);`y`.part", "0"]
    argv = ssh_argv("/usr/bin/ssh", host(tmp_path), remote)
    options = {argv[i + 1] for i, word in enumerate(argv) if word == "-o"}
    assert argv[:3] == ["/usr/bin/ssh", "-F", "/dev/null"]
    assert {
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
        "GlobalKnownHostsFile=/dev/null",
        "UpdateHostKeys=no",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "ForwardAgent=no",
        "ControlPath=none",
    } <= options
    # A host name that looks like an option stays a host name.
    assert argv[-3:-1] == ["--", "-oProxyCommand=evil"]
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    assert shlex.split(argv[-1]) == remote


def test_files_ssh_would_read_otherwise_are_left_to_paramiko(tmp_path: Path) -> None:
    site = host(tmp_path)
    assert unusable(site) is None
    assert "not a plain path" in str(unusable(host(tmp_path, known_hosts="~/%h known")))
    (tmp_path / "id_ed25519").chmod(0o640)  # ssh would ignore the key; paramiko takes it
    assert "can be read by others" in str(unusable(site))
