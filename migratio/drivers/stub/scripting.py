"""Scripted misbehaviour for stub sites: errors a method raises, callbacks run when
a method is called or when a stream passes a byte offset.

A callback is how a test acts from inside a running step, at an exact point: it
may request a cancel, steal the lease, stop the daemon, or raise (a crash).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from migratio.errors import TransientError

Callback = Callable[[], object]  # what it returns is ignored

# What a stub site can be told to misbehave in: its methods, and its two byte streams
# ("read": bytes a source hands out; "receive": bytes a destination takes in).
METHODS = frozenset(
    {
        "describe",
        "read",
        "find_copy",
        "find_record",
        "get_record",
        "create_record",
        "receive",
        "register",
        "distribute",
        "remove",
        "close",
        # StubSites, opening a site for a role
        "source",
        "destination",
    }
)
STREAMS = frozenset({"read", "receive"})


@dataclass
class _Scripted:
    """An error or a callback, for ``times`` more calls (None: every call)."""

    method: str
    times: int | None
    error: BaseException | None = None
    callback: Callback | None = None

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class _AtByte:
    stream: str
    offset: int
    callback: Callback


class Scriptable:
    """A stub whose misbehaviour a test scripts; thread-safe (steps run in worker
    threads, a source stream in a prefetch thread).

    ``calls`` lists every method entered, in order, for tests to assert on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripted: list[_Scripted] = []
        self._at_byte: list[_AtByte] = []
        self._stalls: list[threading.Event] = []
        self.calls: list[str] = []
        self.aborts = 0

    def fail(self, method: str, error: BaseException, *, times: int | None = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error`` (None: until ``heal``)."""
        self._script(_Scripted(_checked(method, METHODS), times, error=error))

    def on_call(self, method: str, callback: Callback, *, times: int | None = 1) -> None:
        """Run ``callback`` when ``method`` is entered, before any scripted error."""
        self._script(_Scripted(_checked(method, METHODS), times, callback=callback))

    def at_byte(self, stream: str, offset: int, callback: Callback) -> None:
        """Run ``callback`` once, as soon as ``stream`` has passed ``offset`` bytes."""
        with self._lock:
            self._at_byte.append(_AtByte(_checked(stream, STREAMS), offset, callback))

    def raise_at(self, stream: str, offset: int, error: BaseException) -> None:
        """``stream`` breaks with ``error`` once it has passed ``offset`` bytes."""

        def fail() -> None:
            raise error

        self.at_byte(stream, offset, fail)

    def stall_at(self, stream: str, offset: int, *, limit: float = 10.0) -> threading.Event:
        """``stream`` stops at ``offset`` until the returned event is set; after
        ``limit`` seconds, or once the site is aborted (``abort``: its connection
        cut), it breaks instead (a test must never hang)."""
        release = threading.Event()
        cut = threading.Event()
        with self._lock:
            self._stalls.append(cut)

        def stall() -> None:
            deadline = time.monotonic() + limit
            while not release.wait(0.01):
                if cut.is_set():
                    raise TransientError(f"stub {stream} stream cut at {offset}")
                if time.monotonic() >= deadline:
                    raise TransientError(f"stub {stream} stream stalled for {limit} s at {offset}")

        self.at_byte(stream, offset, stall)
        return release

    def abort(self) -> None:
        """Cut the site's connections: every stream stalled by ``stall_at`` breaks."""
        with self._lock:
            self.aborts += 1
            for cut in self._stalls:
                cut.set()

    def heal(self, method: str | None = None) -> None:
        """Forget the scripted errors and callbacks of ``method`` (of all, by default)."""
        with self._lock:
            self._scripted = [s for s in self._scripted if method not in (None, s.method)]
            if method is None:
                self._at_byte.clear()

    def count(self, method: str) -> int:
        """How many times ``method`` was entered."""
        return self.calls.count(_checked(method, METHODS))

    def _script(self, scripted: _Scripted) -> None:
        with self._lock:
            self._scripted.append(scripted)

    def _enter(self, method: str) -> None:
        """Called by the stub as ``method`` starts: log it, run callbacks, raise."""
        with self._lock:
            self.calls.append(method)
            due = [s for s in self._scripted if s.method == method and s.take()]
        for scripted in due:
            if scripted.callback is not None:
                scripted.callback()
        for scripted in due:
            if scripted.error is not None:
                raise scripted.error

    def _passed(self, stream: str, offset: int) -> None:
        """Called by the stub as ``stream`` reaches ``offset``: run the callbacks due."""
        with self._lock:
            due = [a for a in self._at_byte if a.stream == stream and a.offset <= offset]
            self._at_byte = [a for a in self._at_byte if all(a is not d for d in due)]
        for hook in due:
            hook.callback()


def _checked(name: str, known: frozenset[str]) -> str:
    """A typo in a script must fail the test, not leave the fault silently unused."""
    if name not in known:
        raise ValueError(f"{name!r} is not one of {sorted(known)}")
    return name
