"""Several "hosts" on one machine, for daemons that must not share one: each host
is a network namespace of its own, joined to the root namespace by a veth pair,
and runs its processes under a hostname of its own (a UTS namespace).

Inside a host, loopback is the host's own: the peers (Keystone, the Glance
sites, PostgreSQL: whatever ``ports`` lists) are reached at their usual
``127.0.0.1:PORT`` through a forwarder in the host, which sends them over the
veth link to a forwarder in the root namespace listening on the link's root-side
address, which hands them to the real peer on the machine's loopback. So every
byte between a daemon and its peers crosses the host's own link, and killing a
daemon closes its connections on that link as a dead host's would (nothing is
shaped: no netem on these machines, see /work/shared/notes/faults.md).

Where namespaces cannot be made (not root), ``hosts`` falls back to plain
processes on the machine's loopback, each named by its pid only, and says so
(``Hosts.namespaces`` False).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORWARDER = Path(__file__).with_name("forwarder.py")
READY_SECONDS = 15.0

# Runs argv[2:] as ``python -m migratio`` under the hostname argv[1] (in a UTS
# namespace of its own, so the machine's name is untouched).
_AS_HOST = (
    "import runpy, socket, sys; socket.sethostname(sys.argv[1]); "
    "sys.argv = ['migratio', *sys.argv[2:]]; "
    "runpy.run_module('migratio', run_name='__main__', alter_sys=True)"
)


@dataclass
class Host:
    """One host: its hostname and, with namespaces, its namespace and link addresses."""

    name: str
    namespace: str | None = None
    address: str = "127.0.0.1"  # the host's end of its link
    gateway: str = "127.0.0.1"  # the root namespace's end
    link: str = ""  # the root namespace's end of the veth pair

    @property
    def hostname(self) -> str:
        """What its processes see as their hostname (the start of their lease owner names)."""
        return self.name if self.namespace is not None else socket.gethostname()

    def migratio(self, *args: str) -> list[str]:
        """The argv of ``migratio ARGS`` run on this host."""
        if self.namespace is None:
            return [sys.executable, "-m", "migratio", *args]
        return [
            *("ip", "netns", "exec", self.namespace, "unshare", "--uts", "--"),
            *(sys.executable, "-c", _AS_HOST, self.name, *args),
        ]


@dataclass
class Hosts:
    hosts: list[Host]
    namespaces: bool
    why_not: str = ""
    _forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _subnet() -> tuple[int, int]:
    """Two octets of 10.x.y.0/24 chosen by our pid, so that concurrent runs differ."""
    pid = os.getpid()
    return 100 + (pid // 256) % 100, pid % 256


def _start_forwarder(
    prefix: Sequence[str], routes: list[str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as errors:
        process = subprocess.Popen(
            [*prefix, sys.executable, str(FORWARDER), *routes],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], READY_SECONDS)
    if not readable or process.stdout.readline().strip() != b"ready":
        process.kill()
        process.wait(10)
        raise RuntimeError(f"forwarder {' '.join(routes)} did not start (see {log})")
    return process


def _make_namespaces(count: int, tag: str) -> list[Host]:
    first, second = _subnet()
    made: list[Host] = []
    try:
        for n in range(1, count + 1):
            host = Host(
                f"host-{n}",
                f"{tag}-{n}",
                address=f"10.{first}.{second}.{4 * n + 2}",
                gateway=f"10.{first}.{second}.{4 * n + 1}",
                link=f"{tag}r{n}",
            )
            assert host.namespace is not None
            _ip("netns", "add", host.namespace)
            made.append(host)
            outside, inside = host.link, f"{tag}h{n}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("addr", "add", f"{host.gateway}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            inside_ns = ("netns", "exec", host.namespace, "ip")
            _ip(*inside_ns, "addr", "add", f"{host.address}/30", "dev", inside)
            _ip(*inside_ns, "link", "set", inside, "up")
            _ip(*inside_ns, "link", "set", "lo", "up")
    except BaseException:
        _remove_namespaces(made)
        raise
    return made


def _remove_namespaces(hosts: list[Host]) -> None:
    # Removing a namespace removes its veth end, and with it the pair; a pair
    # left whole in the root namespace (a setup that failed half-way) goes too.
    for host in hosts:
        if host.namespace is not None:
            subprocess.run(["ip", "netns", "del", host.namespace], check=False, capture_output=True)
        if host.link:
            subprocess.run(["ip", "link", "del", host.link], check=False, capture_output=True)


@contextlib.contextmanager
def hosts(count: int, ports: Sequence[int], logs: Path) -> Iterator[Hosts]:
    """``count`` hosts that reach the peers on ``ports`` at 127.0.0.1; removed after.
    Processes the caller started on them must be stopped before the block ends."""
    tag = f"mh{os.getpid() % 100000}"
    try:
        made = _make_namespaces(count, tag)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        why_not = (getattr(exc, "stderr", "") or str(exc)).strip()
    else:
        why_not = ""
    if why_not:
        yield Hosts([Host(f"host-{n}") for n in range(1, count + 1)], False, why_not)
        return
    result = Hosts(made, namespaces=True)
    try:
        outward = [f"{h.gateway}:{p}=127.0.0.1:{p}" for h in made for p in ports]
        result._forwarders.append(_start_forwarder((), outward, logs / "forward-root.log"))
        for host in made:
            assert host.namespace is not None
            inward = [f"127.0.0.1:{p}={host.gateway}:{p}" for p in ports]
            prefix = ("ip", "netns", "exec", host.namespace)
            log = logs / f"forward-{host.name}.log"
            result._forwarders.append(_start_forwarder(prefix, inward, log))
        yield result
    finally:
        for forwarder in result._forwarders:
            forwarder.kill()
            forwarder.wait(10)
        _remove_namespaces(made)
