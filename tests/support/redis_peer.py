"""A private, real Redis per test (start, SIGKILL, restart on the same port), and
Sidekiq payloads as Atmosphere's Sidekiq writes them."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
from testbed_lib import processes, redis_server
from testbed_lib.ports import free_ports


class PrivateRedis:
    """A ``redis-server`` of this test only. ``persistent``: every acknowledged write
    survives a SIGKILL (append-only file, fsync always). ``password``: clients must
    AUTH (``requirepass``); ``url`` carries it."""

    def __init__(self, directory: Path, *, persistent: bool = False, password: str = "") -> None:
        self.layout = redis_server.RedisLayout(
            directory, directory, free_ports(1)[0], persistent=persistent, password=password
        )
        self.server: processes.Server | None = None
        self.client = redis.Redis(
            port=self.layout.port, password=password or None, socket_timeout=10
        )

    @property
    def url(self) -> str:
        return self.layout.url

    @property
    def port(self) -> int:
        return self.layout.port

    def start(self) -> PrivateRedis:
        self.server = redis_server.start_redis(self.layout, mark=str(self.layout.dir))
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while processes.is_running(self.server):
            if time.monotonic() > deadline:
                raise TimeoutError("redis did not die")
            time.sleep(0.01)
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            processes.stop([self.server])
            self.server = None
        self.client.close()


OPENSTACK_MIGRATOR = "Migratio::Worker::OpenstackOpenstackMigrator"


def as_bytes(replies: Iterable[bytes | str]) -> list[bytes]:
    """redis-py's replies, typed ``bytes | str``, as the bytes a client without
    ``decode_responses`` gets."""
    return [r if isinstance(r, bytes) else r.encode() for r in replies]


def sidekiq_job(args: Any, *, jid: str | None = None, worker: str = OPENSTACK_MIGRATOR) -> bytes:
    """A payload as Sidekiq 6's client writes it for queue migration_site-a (field order too)."""
    body: dict[str, Any] = {"retry": True, "queue": "migration_site-a", "class": worker}
    body["args"] = args
    if jid is not None:
        body["jid"] = jid
    body |= {"created_at": 1795618680.1445465, "enqueued_at": 1795618680.1470842}
    return json.dumps(body, separators=(",", ":")).encode()
