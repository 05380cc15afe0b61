"""Debian packages the bed runs on, installed only when missing."""

import subprocess
from collections.abc import Iterable

from .errors import TestbedError
from .processes import system_env

# Debian's own OpenStack packages: Glance 25 (Zed) runs standalone and copes
# with SQLite; PyPI's Glance needs a WSGI server and fails under concurrency.
TESTBED_PACKAGES: tuple[str, ...] = (
    "glance-api",
    "keystone",
    "uwsgi-core",
    "uwsgi-plugin-python3",
    "qemu-utils",
    "postgresql",
    # The SSH site: a private sshd, and the `openstack` CLI its user runs.
    "openssh-server",
    "openssh-client",
    "python3-openstackclient",
)


def missing_packages(packages: Iterable[str]) -> list[str]:
    """The packages from ``packages`` that dpkg does not list as installed."""
    wanted = list(packages)
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat", "${Package} ${db:Status-Status}\n", *wanted],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")
    }
    return [p for p in wanted if p not in installed]


def ensure_packages(packages: Iterable[str] = TESTBED_PACKAGES) -> list[str]:
    """apt-get install whatever of ``packages`` is missing; return what was installed."""
    missing = missing_packages(packages)
    if not missing:
        return []
    env = system_env({"DEBIAN_FRONTEND": "noninteractive"})
    commands = [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
    ]
    for argv in commands:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise TestbedError(f"{' '.join(argv[:2])} failed (exit {result.returncode}): {last}")
    return missing
