"""registering: give the copy its metadata and provenance, then prove its bytes."""

from __future__ import annotations

from migratio.drivers.base import Provenance, Registration
from migratio.errors import IntegrityError, TransientError
from migratio.image_metadata import carried_properties
from migratio.machine import Trigger
from migratio.step import Advance, Step


def run(step: Step) -> Advance:
    migration = step.migration
    image = step.source_image
    if migration.dest_image_id is None:
        raise IntegrityError("no destination image recorded; cannot register")
    provenance = Provenance(image.id, migration.source_site, image.sha512)
    properties, dropped = carried_properties(image.properties, converted=step.needs_conversion)
    registered = step.destination.register(
        migration.dest_image_id,
        Registration(
            name=image.name,
            disk_format=step.target_format,
            container_format=image.container_format,
            min_disk=image.min_disk,
            min_ram=image.min_ram,
            architecture=image.architecture,
            properties={**properties, **provenance.labels()},
            tags=image.tags,
            protected=image.protected,
        ),
    )
    if registered.id != migration.dest_image_id:
        step.add_artifact("dest_image", registered.id, migration.dest_site)
        step.record(dest_image_id=registered.id)
    if not registered.is_complete:
        raise TransientError(f"destination image {registered.id} is {registered.status}")
    if registered.sha512 != migration.dest_sha512:
        raise IntegrityError(
            f"destination image {registered.id} sha512 differs from the bytes sent"
        )
    note = (
        f"; dropped {', '.join(dropped)}: they sign the source's {image.disk_format} "
        f"bytes, converted to {step.target_format}"
        if dropped
        else ""
    )
    return Advance(
        Trigger.REGISTERED,
        f"registered as image {registered.id} on {migration.dest_site}; sha512 verified{note}",
        keep=(registered.id, *registered.parts),
    )
