"""How many EBS blocks every snapshot writer of the daemon holds at once.

A writer keeps its ``workers`` blocks on the wire and a few read ahead, each
512 KiB of resident memory: with the default 16 workers, four migrations at once
held 80 blocks (40 MiB). The daemon's writers share one budget instead. A writer
alone never waits for it (its own window is within the budget, or it may fill
that window whatever the budget says), and a writer with nothing on the wire may
always send one block, so none starves while the others go on.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

# Blocks held at once by all writers: 16 MiB. One writer's default window
# (16 workers + 4 read ahead) fits, so a lone migration runs as before.
BLOCKS_HELD = 32


class BlockBudget:
    """Blocks read and not yet answered, across every writer of the process.

    limit: the blocks all writers may hold together; a writer whose own window
    is larger may still fill that window.
    """

    def __init__(self, limit: int = BLOCKS_HELD) -> None:
        self.limit = limit
        self.held = 0
        self._changed = threading.Condition()

    def take(self, window: int, own: int, timeout: float) -> bool:
        """Hold one more block for a writer with ``window`` blocks of its own and
        ``own`` of them held now; False if none came free within ``timeout``."""
        with self._changed:
            if not self._may_take(window, own):
                self._changed.wait(timeout)
                if not self._may_take(window, own):
                    return False
            self.held += 1
            return True

    def give(self, _future: Future[Any] | None = None) -> None:
        """A block answered (or never sent); usable as a future's done callback."""
        with self._changed:
            self.held -= 1
            self._changed.notify_all()

    def _may_take(self, window: int, own: int) -> bool:
        return own == 0 or self.held < max(self.limit, window)


BUDGET = BlockBudget()
