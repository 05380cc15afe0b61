"""The status text Atmosphere shows for each change of a migration.

Atmosphere appends each text to the migration job's status and shows the last
line, so every text stands on its own. Its first message was always
``Migration started``.
"""

from __future__ import annotations

from migratio.ledger.store import Change
from migratio.machine import State

STARTED = "Migration started"


def status_text(change: Change) -> str:
    migration = change.migration
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
