"""The open sockets of one driver, so that another thread can cut them.

A call blocked on a silent peer (a frozen upload, an answer that never comes)
waits in ``recv`` or ``send`` inside a client library. Closing the client does
not wake it: urllib3 closes only the connections back in its pool, and closing
a file descriptor another thread waits on is not portable. ``shutdown`` is: the
blocked call returns at once (end of file or EPIPE), the library raises its
usual connection error, and the driver maps that to ``TransientError``.

Drivers register every socket they open (``track_pools`` does it for urllib3
pools, which both requests and botocore use); the stall watchdog calls ``cut``.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import MutableMapping
from typing import Any

log = logging.getLogger(__name__)


class LiveSockets:
    """Sockets of one driver, held weakly: a closed, forgotten socket drops out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def cut(self) -> int:
        """Shut down every open socket (both directions); returns how many.

        Safe from any thread, never blocks: the owners see their calls fail and
        close the sockets themselves.
        """
        with self._lock:
            sockets = list(self._sockets)
        cut = 0
        for sock in sockets:
            if sock.fileno() < 0:
                continue
            try:
                # The base class's, also for an SSLSocket: its own shutdown drops the
                # TLS state under the feet of the thread still reading it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
                cut += 1
            except OSError:
                pass  # not connected (yet, or any more)
        return cut

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for sock in self._sockets if sock.fileno() >= 0)


def track_pools(pool_classes: MutableMapping[str, Any], sockets: LiveSockets) -> None:
    """Make the urllib3 pools of ``pool_classes`` (a PoolManager's
    ``pool_classes_by_scheme``, by scheme) register each socket they open."""
    for scheme, pool_class in list(pool_classes.items()):
        if getattr(pool_class, "_migratio_sockets", None) is sockets:
            continue
        connection_class = pool_class.ConnectionCls

        def new_conn(self: Any, _base: Any = connection_class) -> socket.socket:
            sock: socket.socket = _base._new_conn(self)
            sockets.add(sock)
            return sock

        tracked_connection = type(
            f"Tracked{connection_class.__name__}", (connection_class,), {"_new_conn": new_conn}
        )
        pool_classes[scheme] = type(
            f"Tracked{pool_class.__name__}",
            (pool_class,),
            {"ConnectionCls": tracked_connection, "_migratio_sockets": sockets},
        )
