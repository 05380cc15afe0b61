"""Take one server of a running bed down and bring it back: ``testbed stop|start DIR SERVICE``.

Fault-injection tests stop a peer mid-run (a Glance restarting, Redis away) and
start it again on the same port with the same state, as an operator's restart
would. The names are those of ``testbed status``: keystone-site-a,
keystone-site-b, glance-site-a, glance-site-b, redis, moto, sshd; ``keystone``
names both Keystones at once (the name from when the sites shared one).
"""

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from . import glance, keystone, moto_server, pidfile, processes, redis_server, sshd
from .bed import READY_TIMEOUT, Bed, load
from .errors import TestbedError
from .processes import Server


def stop_service(directory: Path, name: str) -> None:
    """Stop one recorded server (SIGTERM, then SIGKILL); its state stays in DIR.

    The processes it started go too, also those that left its process group (sshd's
    sessions): a peer that goes away takes its open connections with it.
    """
    for server in _recorded(directory.resolve(), name):
        started = processes.descendants(server.pid) if processes.is_running(server) else []
        processes.stop([server])
        processes.end(started)


def start_service(directory: Path, name: str, timeout: float = READY_TIMEOUT) -> list[Server]:
    """Start a stopped server again where it was; return once it answers.

    ``keystone`` starts both sites' Keystones, side by side.
    """
    directory = directory.resolve()
    bed = load(directory)
    if bed is None:
        raise TestbedError(f"no testbed recorded in {directory}")

    def start(old: Server) -> Server:
        if processes.is_running(old):
            return old
        server = _starter(bed, old.name)(old.mark)
        pidfile.record(directory, server)
        return server

    recorded = _recorded(directory, name)
    with ThreadPoolExecutor(max_workers=len(recorded)) as pool:
        return list(pool.map(start, recorded))


def set_token_expiration(directory: Path, site: str, seconds: int) -> int:
    """Give ``site``'s Keystone a new ``[token] expiration`` and restart it; return the old one.

    Tokens already issued keep their own expiry (the keys stay). For tests of
    what a migration does when its tokens expire under it.
    """
    directory = directory.resolve()
    bed = load(directory)
    if bed is None:
        raise TestbedError(f"no testbed recorded in {directory}")
    layout = _keystone_layout(bed, site)
    old = keystone.token_expiration(layout)
    stop_service(directory, layout.name)
    keystone.write_config(layout, seconds)
    start_service(directory, layout.name)
    return old


def _starter(bed: Bed, name: str) -> Callable[[str], Server]:
    logs = bed.logs_dir
    if name.startswith("keystone-"):
        layout = _keystone_layout(bed, name[len("keystone-") :])

        def start_keystone(mark: str) -> Server:
            server = keystone.start(layout, mark)
            processes.wait_http(server, layout.url)
            return server

        return start_keystone
    if name.startswith("glance-") and name[len("glance-") :] in bed.glance_urls:
        site = name[len("glance-") :]
        glance_layout = glance.GlanceLayout(
            site, bed.dir / name, logs, _port(bed.glance_urls[site])
        )

        def start_glance(mark: str) -> Server:
            server = glance.start(glance_layout, mark)
            processes.wait_http(server, f"{glance_layout.url}/healthcheck")
            return server

        return start_glance
    if name == "redis":
        redis = redis_server.RedisLayout(bed.dir / "redis", logs, _port(bed.redis_url))
        return lambda mark: redis_server.start_redis(redis, mark)
    if name == "moto":
        moto = moto_server.MotoLayout(bed.dir / "moto", logs, _port(bed.moto_url))
        return lambda mark: moto_server.start_moto(moto, mark)
    if name == "sshd":
        ssh = sshd.SshdLayout(bed.dir / "sshd", logs, _sshd_port(bed))
        return lambda mark: sshd.start(ssh, mark)
    raise TestbedError(f"unknown service {name!r}")


def _recorded(directory: Path, name: str) -> list[Server]:
    servers = {server.name: server for server in pidfile.load(directory)}
    if name == "keystone":
        return [s for known, s in sorted(servers.items()) if known.startswith("keystone-")]
    if name not in servers:
        known = ", ".join(sorted(servers)) or "none"
        raise TestbedError(f"no service {name!r} in {directory} (known: {known})")
    return [servers[name]]


def _keystone_layout(bed: Bed, site: str) -> keystone.KeystoneLayout:
    if site not in bed.keystone_urls:
        raise TestbedError(f"no Keystone for site {site!r} (sites: {', '.join(bed.keystone_urls)})")
    return keystone.KeystoneLayout(
        site, bed.dir / f"keystone-{site}", bed.logs_dir, _port(bed.keystone_urls[site])
    )


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise TestbedError(f"no port in {url!r}")
    return port


def _sshd_port(bed: Bed) -> int:
    match = re.search(r"^Port (\d+)$", (bed.dir / "sshd" / "sshd_config").read_text(), re.M)
    if match is None:
        raise TestbedError("sshd_config names no port")
    return int(match.group(1))
