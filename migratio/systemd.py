"""What the daemon tells systemd (sd_notify(3)): ready, reloading, stopping, a status
line, and watchdog pings.

Written by hand rather than taken from PyPI's ``sdnotify``: the protocol is one
datagram of ``KEY=VALUE`` lines to the socket named in ``$NOTIFY_SOCKET``, while
``sdnotify`` (last release 2017, untyped) knows nothing of the watchdog variables
this module exists for. Without ``$NOTIFY_SOCKET`` (not under systemd, tests,
the CLI) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)

# The STATUS= line is refreshed this often (``systemctl status`` shows it).
STATUS_SECONDS = 5.0
# The variables systemd sets for this process only: children (qemu-img, ssh)
# must not inherit them, or they could notify on our behalf.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """A link to the service manager, inert when there is none.

    ``address``: the notify socket (``@name`` for the abstract namespace).
    ``watchdog_seconds``: systemd's ``WatchdogSec=``; ``tick()`` pings at half of it.
    """

    def __init__(self, address: str | None = None, watchdog_seconds: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog_seconds
        self._socket: socket.socket | None = None
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._last_ping = 0.0
        self._last_status = 0.0
        self._warned = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for; its variables are removed from the environment."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog = None
        pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        for name in ENVIRONMENT:
            env.pop(name, None)
        return cls(address, watchdog)

    @property
    def active(self) -> bool:
        return self.address is not None

    def pause_limit(self, seconds: float) -> float:
        """``seconds``, shortened so that a loop waiting that long still pings in time."""
        if self.watchdog_seconds is None:
            return seconds
        # Pings are due after half of WatchdogSec; waking every quarter sends each
        # within three quarters, whatever the loop's own pace.
        return min(seconds, self.watchdog_seconds / 4)

    def ready(self, summary: Callable[[], str] | None = None) -> None:
        """READY=1, with ``summary()`` as STATUS (asked only when systemd listens:
        it costs a ledger query)."""
        if not self.active:
            return
        status = summary() if summary else None
        if status:
            self._last_status = time.monotonic()
            self.send("READY=1", "STATUS=" + " ".join(status.split()))
        else:
            self.send("READY=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the READY=1 after it.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send("STATUS=" + " ".join(text.split()))

    def tick(self, summary: Callable[[], str]) -> None:
        """Called from the loop whose progress the watchdog stands for: pings when
        half of ``WatchdogSec`` has passed, refreshes STATUS every few seconds."""
        if not self.active:
            return
        now = time.monotonic()
        if self.watchdog_seconds is not None and now - self._last_ping >= (
            self.watchdog_seconds / 2
        ):
            self._last_ping = now
            self.send("WATCHDOG=1")
        if now - self._last_status >= STATUS_SECONDS:
            self._last_status = now
            self.status(summary())

    def send(self, *fields: str) -> None:
        """One datagram; a failure is logged once and never stops the daemon."""
        if self.address is None or self._socket is None:
            return
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto("\n".join(fields).encode(), address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc.strerror or exc)
