"""The HTTP endpoint Prometheus scrapes: ``/metrics`` of one registry on ``host:port``."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from migratio.config import listen_address
from migratio.errors import ConfigError


class Endpoint:
    """A running ``/metrics`` server (prometheus_client's, in a daemon thread)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @classmethod
    def open(cls, listen: str, registry: CollectorRegistry, config_file: str) -> Endpoint:
        """Serve on ``listen``; a port that cannot be bound is a ConfigError naming the key."""
        host, port = listen_address(listen)
        try:
            server, thread = start_http_server(port, host, registry)
        except OSError as exc:
            problem = f"cannot listen on {listen}: {exc.strerror or exc}"
            raise ConfigError(config_file, "metrics_listen", problem) from None
        return cls(server, thread)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
