"""When an upload's progress is worth a line for the platform.

Atmosphere appends every line to the migration job's status, so a line each
second would drown the others: one each time another 10% is done, or 30 s after
the last one when the upload is slow (a sign of life), whichever comes first.
Lines are at least 2 s apart, counted from the start of the upload too: a line
that stands for less is never seen, and a small image's upload (a second or
less) reports only its state changes.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_PERCENT = 10
QUIET_SECONDS = 30.0
MIN_SECONDS = 2.0


@dataclass
class ProgressPacer:
    """Decides, at each reading of an upload, whether a feedback line is due.

    The first reading is the baseline (where a resumed upload starts). A line is
    due once ``step_percent`` more of ``total`` is done than at the last line, or
    ``quiet_seconds`` after it, but never within ``min_seconds`` of it, nor at
    100% (the next state's line follows).
    """

    step_percent: float = STEP_PERCENT
    quiet_seconds: float = QUIET_SECONDS
    min_seconds: float = MIN_SECONDS
    _done: int | None = None
    _at: float = 0.0

    def due(self, done: int, total: int | None, now: float) -> float | None:
        """The rate (bytes/s) since the last line if a line is due now, else None."""
        if self._done is None:
            self._done, self._at = done, now
            return None
        if (total and done >= total) or now - self._at < self.min_seconds:
            return None
        step = bool(total) and (done - self._done) * 100 >= self.step_percent * (total or 0)
        if not step and now - self._at < self.quiet_seconds:
            return None
        rate = (done - self._done) / (now - self._at) if now > self._at else 0.0
        self._done, self._at = done, now
        return max(rate, 0.0)
