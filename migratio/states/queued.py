"""queued: nothing to do but start; the claim itself was the work."""

from __future__ import annotations

from migratio.machine import Trigger
from migratio.step import Advance, Step


def run(step: Step) -> Advance:
    migration = step.migration
    return Advance(
        Trigger.START,
        f"migrating image {migration.image_id} from {migration.source_site} "
        f"to {migration.dest_site}",
    )
