"""The status text Atmosphere shows for each change of a migration.

Atmosphere appends each text to the migration job's status and shows the last
line, so every text stands on its own. Its first message was always
``Migration started``.
"""

from __future__ import annotations

from migratio.ledger.store import Change, UploadProgress
from migratio.machine import State

STARTED = "Migration started"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def status_text(change: Change) -> str:
    migration = change.migration
    if isinstance(change, UploadProgress):
        return upload_progress_text(
            migration.dest_site, change.bytes_done, change.bytes_total, change.bytes_per_second
        )
    if change.from_state is None or change.joined_by is not None:
        return STARTED
    match migration.state:
        case State.QUEUED:
            return f"Migration queued again: {change.message}"
        case State.EXPORTING:
            return f"Reading image {migration.image_id} at {migration.source_site}"
        case State.CONVERTING:
            return f"Image checked; preparing it for {migration.dest_site}"
        case State.UPLOADING:
            return f"Uploading image to {migration.dest_site}"
        case State.REGISTERING:
            return f"Registering image at {migration.dest_site}"
        case State.DONE if change.from_state == State.EXPORTING:
            return (
                f"Migration done: {migration.dest_site} already had it as image "
                f"{migration.dest_image_id}"
            )
        case State.DONE if migration.dest_copies:
            return (
                f"Migration done: image {migration.dest_image_id} at {migration.dest_site}; "
                f"copies {', '.join(migration.dest_copies)}"
            )
        case State.DONE:
            return f"Migration done: image {migration.dest_image_id} at {migration.dest_site}"
        case State.FAILED:
            return f"Migration failed: {migration.last_error or change.message}"
        case State.CANCELLED:
            return f"Migration cancelled: {change.message}"
    return f"Migration {migration.state}: {change.message}"


def failure_text(reason: str) -> str:
    """For a job that never became a migration."""
    return f"Migration failed: {reason}"


def upload_progress_text(dest_site: str, done: int, total: int | None, rate: float) -> str:
    """``Uploading image to <site>: 45% (1.2 of 2.7 GiB, 180 MiB/s)``.

    Both sizes in the total's unit; the percentage rounded down, so 100% is never
    shown before the end. Without a known total: ``... to <site>: 1.2 GiB (180 MiB/s)``.
    """
    speed = f"{_amount(rate, _unit(rate))}/s"
    if not total:
        return f"Uploading image to {dest_site}: {_amount(done, _unit(done))} ({speed})"
    unit = _unit(total)
    scale, name = unit
    sizes = f"{_number(done / scale, scale)} of {_number(total / scale, scale)} {name}"
    return f"Uploading image to {dest_site}: {done * 100 // total}% ({sizes}, {speed})"


def _unit(amount: float) -> tuple[int, str]:
    for scale, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if amount >= scale:
            return scale, name
    return 1, "B"


def _amount(amount: float, unit: tuple[int, str]) -> str:
    scale, name = unit
    return f"{_number(amount / scale, scale)} {name}"


def _number(value: float, scale: int) -> str:
    # Tenths of a GiB tell a progress apart; below that whole units do.
    return f"{value:.1f}" if scale == GIB else f"{int(value)}"
