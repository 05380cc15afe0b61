"""A TCP proxy that forwards to a real peer and, on command, freezes a connection.

A frozen direction moves nothing: the proxy stops reading and writing it, and
keeps both sockets open, so the client sees a peer that is there and silent
(its sends block once the kernel's buffers are full, its reads wait) — what no
socket error and no refused connection tell it. ``freeze_when`` arms a trigger:
the connection that carries the proxy past so many bytes towards the peer (or
back) freezes, mid-stream (with ``everything``, so does every connection made
after it: a whole peer gone silent); freezing only ``down`` lets every byte of
an upload through and withholds the peer's answer. ``thaw`` lets frozen
connections move again and new ones pass. Bytes are counted both ways.

No netem on the test machines; this is the fault injection for silent peers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

UP, DOWN = "up", "down"  # towards the peer, back to the client


@dataclass
class _Trigger:
    direction: str  # whose byte count arms it
    after: int
    freeze: frozenset[str]
    everything: bool


@dataclass
class Connection:
    """One proxied connection: its byte counts and which directions are frozen."""

    client: socket.socket
    upstream: socket.socket
    moved: dict[str, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    frozen: set[str] = field(default_factory=set)
    thawed: threading.Condition = field(default_factory=threading.Condition)


class FreezingProxy:
    """Listens on a free loopback port and forwards every connection to ``host:port``.

    frozen_at: ``time.monotonic()`` when the last freeze happened (for measuring
        how long the client took to notice).
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.connections: list[Connection] = []
        self.frozen_at: float | None = None
        self._trigger: _Trigger | None = None
        self._moved = {UP: 0, DOWN: 0}
        self._silent: frozenset[str] = frozenset()  # frozen on every new connection
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._frozen_event = threading.Event()
        threading.Thread(target=self._accept, name="freezing-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def freeze_when(
        self,
        after: int,
        *,
        counting: str = UP,
        freeze: tuple[str, ...] = (UP, DOWN),
        everything: bool = False,
    ) -> None:
        """Freeze (the ``freeze`` directions of) the connection that takes the
        proxy past ``after`` more bytes in direction ``counting``; once only.
        ``everything``: and every connection made after it, until ``thaw``."""
        with self._lock:
            after += self._moved[counting]
            self._trigger = _Trigger(counting, after, frozenset(freeze), everything)
            self._frozen_event.clear()

    def wait_frozen(self, timeout: float) -> bool:
        return self._frozen_event.wait(timeout)

    def thaw(self) -> None:
        """Let every frozen connection move again (the client may have cut it by then)."""
        with self._lock:
            self._trigger = None
            self._silent = frozenset()
            connections = list(self.connections)
        for connection in connections:
            with connection.thawed:
                connection.frozen.clear()
                connection.thawed.notify_all()

    def moved(self, direction: str) -> int:
        with self._lock:
            return sum(connection.moved[direction] for connection in self.connections)

    def close(self) -> None:
        self._stopped.set()
        self.thaw()
        self._listener.close()
        for connection in list(self.connections):
            for end in (connection.client, connection.upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            connection = Connection(client, upstream)
            with self._lock:
                connection.frozen |= self._silent
                self.connections.append(connection)
            for direction, source, sink in ((UP, client, upstream), (DOWN, upstream, client)):
                threading.Thread(
                    target=self._pump,
                    args=(connection, direction, source, sink),
                    name=f"freezing-proxy-{direction}",
                    daemon=True,
                ).start()

    def _pump(
        self, connection: Connection, direction: str, source: socket.socket, sink: socket.socket
    ) -> None:
        try:
            while not self._stopped.is_set():
                self._hold_while_frozen(connection, direction)
                data = source.recv(65536)
                if not data:
                    break
                self._count(connection, direction, len(data))
                # Bytes read when the freeze came are held, not passed on.
                self._hold_while_frozen(connection, direction)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _count(self, connection: Connection, direction: str, amount: int) -> None:
        with self._lock:
            connection.moved[direction] += amount
            self._moved[direction] += amount
            trigger = self._trigger
            if trigger is None or trigger.direction != direction:
                return
            if self._moved[direction] <= trigger.after:
                return
            self._trigger = None
            if trigger.everything:
                self._silent = trigger.freeze
            self.frozen_at = time.monotonic()
        with connection.thawed:
            connection.frozen |= trigger.freeze
        self._frozen_event.set()

    def _hold_while_frozen(self, connection: Connection, direction: str) -> None:
        with connection.thawed:
            while direction in connection.frozen and not self._stopped.is_set():
                connection.thawed.wait(0.2)


@contextlib.contextmanager
def freezing_proxy(host: str, port: int) -> Iterator[FreezingProxy]:
    with FreezingProxy(host, port) as proxy:
        yield proxy
