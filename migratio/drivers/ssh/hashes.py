"""Hashes at both ends of an SSH upload: what was sent, and what the host holds.

This side keeps the sha256 of every complete block it sends (the ``Journal``,
hashed in a thread beside the sending one). The host runs one fixed Python
program (``REMOTE_HASHER``) whose inputs are only ever argv elements: it lists
the hashes of a file's blocks (to find where a resumed upload may continue), or
follows a file while it is being written and reports its sha512 once the
uploader, on stdin, says how long it is — so the check costs no second pass.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from migratio.drivers.ssh.remote import Completed, RemoteHost, RunningCommand
from migratio.errors import PermanentError

MiB = 1024 * 1024
BLOCK_SIZE = 8 * MiB
# Bounds the journal (hashes are 32 hex digits): a 100 GiB image gets 25 MiB blocks.
MAX_BLOCKS = 4096
STATE_KEY = "ssh_staging"
# Chunks handed to the hashing thread and not yet hashed; bounds memory.
HASH_BACKLOG = 8
# `python3 -I` ignores PYTHON* variables and the user's site directory. Written
# for any Python 3 that an `openstack` CLI runs on.
REMOTE_HASHER = """\
import hashlib, json, os, select, sys
path, mode = sys.argv[1], sys.argv[2]
try:
    handle = open(path, "rb")
except FileNotFoundError:
    print(json.dumps({"size": None}))
    sys.exit(0)
with handle:
    if mode == "blocks":
        block, count = int(sys.argv[3]), int(sys.argv[4])
        blocks = []
        while len(blocks) < count:
            data = handle.read(block)
            if len(data) < block:
                break
            blocks.append(hashlib.sha256(data).hexdigest()[:32])
        print(json.dumps({"size": os.fstat(handle.fileno()).st_size, "blocks": blocks}))
        sys.exit(0)
    digest, done, final = hashlib.sha512(), 0, None
    while True:
        want = 4 << 20 if final is None else min(4 << 20, final - done)
        data = handle.read(want) if want > 0 else b""
        if data:
            digest.update(data)
            done += len(data)
        elif final is not None:
            break
        elif select.select([sys.stdin], [], [], 0.05)[0]:
            line = sys.stdin.readline()
            if not line.strip():
                sys.exit(3)
            final = int(line)
    size = os.fstat(handle.fileno()).st_size
    print(json.dumps({"size": size, "hashed": done, "sha512": digest.hexdigest()}))
"""


def block_size_for(size: int | None) -> int:
    if not size:
        return BLOCK_SIZE
    needed = -(-size // MAX_BLOCKS)
    return max(BLOCK_SIZE, -(-needed // MiB) * MiB)


@dataclass
class Journal:
    """What has been written to one staging file: hashes of its complete blocks,
    and counters (all attempts) that show how much was sent again after a resume.

    ``add`` hashes in a thread; ``settle`` waits for it before the hashes are final.
    """

    path: str
    block_size: int
    blocks: list[str] = field(default_factory=list)
    sent: int = 0
    attempts: list[int] = field(default_factory=list)
    _partial: Any = field(default=None, repr=False)
    _partial_bytes: int = 0
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pending: deque[Future[None]] = field(default_factory=deque, repr=False)

    @classmethod
    def load(cls, state: dict[str, Any], path: str, size: int | None) -> Journal:
        recorded = state.get(STATE_KEY)
        if isinstance(recorded, dict) and recorded.get("path") == path:
            return cls(
                path=path,
                block_size=int(recorded["block_size"]),
                blocks=[str(b) for b in recorded.get("blocks", [])],
                sent=int(recorded.get("sent", 0)),
                attempts=[int(a) for a in recorded.get("attempts", [])],
            )
        return cls(path=path, block_size=block_size_for(size))

    def keep(self, count: int) -> None:
        """Forget every block after the first ``count`` (the host does not hold them)."""
        del self.blocks[count:]
        self._partial, self._partial_bytes = None, 0

    def add(self, chunk: bytes) -> None:
        self.sent += len(chunk)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="block-hashes")
        self._pending.append(self._pool.submit(self._hash, chunk))
        while len(self._pending) > HASH_BACKLOG:
            self._pending.popleft().result()

    def settle(self) -> None:
        """Wait until every chunk added is hashed; stop the hashing thread."""
        while self._pending:
            self._pending.popleft().result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def state(self) -> dict[str, Any]:
        return {
            STATE_KEY: {
                "path": self.path,
                "block_size": self.block_size,
                "blocks": list(self.blocks),
                "sent": self.sent,
                "attempts": list(self.attempts),
            }
        }

    def _hash(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self._partial is None:
                self._partial = hashlib.sha256()
            take = min(len(view), self.block_size - self._partial_bytes)
            self._partial.update(view[:take])
            self._partial_bytes += take
            view = view[take:]
            if self._partial_bytes == self.block_size:
                self.blocks.append(self._partial.hexdigest()[:32])
                self._partial, self._partial_bytes = None, 0


@dataclass(frozen=True)
class Digest:
    """A file's size on the host and the sha512 of its first ``hashed`` bytes."""

    size: int
    hashed: int
    sha512: str


class RemoteHashes:
    """``REMOTE_HASHER`` run on the host, one process per question."""

    def __init__(self, host: RemoteHost) -> None:
        self.host = host

    def blocks(
        self, path: str, block_size: int, count: int, timeout: float
    ) -> tuple[int, list[str]] | None:
        """The file's size and the hashes of its first ``count`` complete blocks."""
        answer = self._answer(
            self.host.run(
                self._argv(path, "blocks", str(block_size), str(count)),
                self._action(path),
                timeout=timeout,
            ),
            path,
        )
        if answer.get("size") is None:
            return None
        return int(answer["size"]), [str(b) for b in answer.get("blocks", [])]

    def follow(self, path: str) -> RunningCommand:
        """Start hashing a file that is being written; ``finished`` gives the result."""
        return self.host.start(self._argv(path, "follow"), self._action(path))

    def finished(
        self, follower: RunningCommand, path: str, length: int, timeout: float
    ) -> Digest | None:
        """Tell a follower the file is ``length`` bytes long, then read its answer."""
        result = follower.finish(f"{length}\n".encode(), timeout=timeout)
        return self._digest(self._answer(result, path))

    # -- parts ----------------------------------------------------------------

    def _argv(self, path: str, *args: str) -> list[str]:
        return ["python3", "-I", "-c", REMOTE_HASHER, path, *args]

    def _action(self, path: str) -> str:
        return f"hash {path} on the host"

    def _answer(self, result: Completed, path: str) -> dict[str, Any]:
        action = self._action(path)
        if result.status != 0:
            raise PermanentError(self.host.message(action, result.error_text()))
        try:
            answer = json.loads(result.stdout)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PermanentError(self.host.message(action, "unexpected output"))
        return answer

    def _digest(self, answer: dict[str, Any]) -> Digest | None:
        if answer.get("size") is None:
            return None
        return Digest(int(answer["size"]), int(answer["hashed"]), str(answer["sha512"]))
