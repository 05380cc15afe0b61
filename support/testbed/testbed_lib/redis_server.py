"""A private Redis on loopback: the bed's job queue, and a throw-away server for tests.

``redis-server`` runs in the foreground as a bed server (``processes.spawn``), so
``down`` stops it like the others. Nothing is persisted unless ``persistent``
is set; then every write goes to an append-only file fsynced before Redis
answers, so a server killed with SIGKILL comes back with every acknowledged
write (the tests that kill Redis need that).
"""

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import files
from .errors import TestbedError
from .packages import ensure_packages
from .processes import Server, is_running, spawn

REDIS_SERVER = "/usr/bin/redis-server"


@dataclass(frozen=True)
class RedisLayout:
    """Where one Redis keeps its files (``dir``), logs and listens."""

    dir: Path
    logs: Path
    port: int
    persistent: bool = False
    # A ``requirepass``, kept in a 0600 config file: never on the command line.
    password: str = ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.logs / f"redis-{self.port}.log"


def start_redis(layout: RedisLayout, mark: str, timeout: float = 30.0) -> Server:
    """Start Redis (installing Debian's package if missing); return once it answers PING."""
    ensure_packages(["redis-server"])
    layout.dir.mkdir(parents=True, exist_ok=True)
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "always"]
        if layout.persistent
        else ["--appendonly", "no"]
    )
    argv = [REDIS_SERVER]
    if layout.password:
        conf = layout.dir / "redis.conf"
        files.write_private(conf, f"requirepass {layout.password}\n")
        argv.append(str(conf))
    argv += [
        "--bind",
        "127.0.0.1",
        "--port",
        str(layout.port),
        "--save",
        "",
        *persistence,
        "--dir",
        str(layout.dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
    ]
    server = spawn("redis", argv, layout.log, mark=mark)
    wait_redis(server, layout.port, timeout, password=layout.password)
    return server


def wait_redis(server: Server, port: int, timeout: float = 30.0, *, password: str = "") -> None:
    """Return once Redis on ``port`` answers PING; fail early if it exits.

    A Redis replaying its append-only file answers ``-LOADING``: not ready yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        if ping(port, password):
            return
        if not is_running(server):
            raise TestbedError(f"redis exited while starting; read {server.log}")
        if time.monotonic() > deadline:
            raise TestbedError(f"redis not ready on port {port} after {timeout:g} s")
        time.sleep(0.02)


def ping(port: int, password: str = "") -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING with PONG."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as conn:
        if password:
            secret = password.encode()
            conn.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
            if not conn.recv(64).startswith(b"+OK"):
                return False
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")
    return False
