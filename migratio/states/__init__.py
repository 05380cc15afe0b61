"""One module per state: the work done while a migration is in that state.

Each handler is idempotent: re-entered after a crash, it finds what was already
done (recorded ids, checksums, files) instead of doing it twice.
"""

from __future__ import annotations

from collections.abc import Callable

from migratio.machine import State
from migratio.states import converting, exporting, queued, registering, uploading
from migratio.step import Advance, Step

Handler = Callable[[Step], Advance]

HANDLERS: dict[str, Handler] = {
    State.QUEUED: queued.run,
    State.EXPORTING: exporting.run,
    State.CONVERTING: converting.run,
    State.UPLOADING: uploading.run,
    State.REGISTERING: registering.run,
}
