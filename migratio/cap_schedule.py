"""Bandwidth caps as operators write them: a number, or a weekly schedule.

    max_mib_per_s: 50                  # always
    max_mib_per_s:                     # 50 MiB/s on working hours, none at night
      timezone: Europe/Warsaw          # default UTC
      default: null                    # outside every window (null: no cap)
      windows:
        - {days: [mon, tue, wed, thu, fri], hours: "08:00-18:00", mib_per_s: 50}

The first window that holds the moment gives the cap. A window whose end is not
after its start runs over midnight (``22:00-06:00``: its days name the evening).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIB = 1 << 20
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_A_DAY = 24 * 60
HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
Rate = Annotated[float, Field(gt=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapWindow(_Frozen):
    """Part of the week with its own cap (``mib_per_s`` null: no cap then)."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1)
    hours: str = "00:00-24:00"
    mib_per_s: Rate | None

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        _minutes(value)
        return value

    def holds(self, moment: datetime) -> bool:
        """Whether ``moment`` (local time of the schedule) is inside the window."""
        start, end = _minutes(self.hours)
        minute = moment.hour * 60 + moment.minute
        if start < end:
            return DAYS[moment.weekday()] in self.days and start <= minute < end
        # Over midnight: the evening of a named day, or the morning after one.
        yesterday = DAYS[(moment - timedelta(days=1)).weekday()]
        return (DAYS[moment.weekday()] in self.days and minute >= start) or (
            yesterday in self.days and minute < end
        )


def _minutes(hours: str) -> tuple[int, int]:
    """ "HH:MM-HH:MM" as minutes of the day, or ValueError."""
    match = HOURS.match(hours)
    if match is None:
        raise ValueError('must be "HH:MM-HH:MM", like "08:00-18:00"')
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if max(start_m, end_m) > 59 or start >= MINUTES_A_DAY or end > MINUTES_A_DAY:
        raise ValueError(f"{hours!r} is not a range of times of day (00:00 to 24:00)")
    return start, end


class CapSchedule(_Frozen):
    """A cap that changes over the week."""

    timezone: str = "UTC"
    default: Rate | None = None
    windows: list[CapWindow] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (like Europe/Warsaw)") from None
        return value

    def mib_per_s(self, now: datetime) -> float | None:
        local = now.astimezone(ZoneInfo(self.timezone))
        for window in self.windows:
            if window.holds(local):
                return window.mib_per_s
        return self.default


# What a site file or migratio.yml holds under ``max_mib_per_s``.
Cap = Rate | CapSchedule | None


def bytes_per_second(cap: Cap, now: datetime) -> float | None:
    """The cap in force at ``now`` (aware), in bytes per second; None: no cap."""
    if cap is None:
        return None
    mib = cap.mib_per_s(now) if isinstance(cap, CapSchedule) else cap
    return None if mib is None else mib * MIB
