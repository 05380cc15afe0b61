"""The stub site's copies of a registered image, as an AWS site copies an AMI to
other regions: one per ``copy_regions`` entry, found again when registering is
re-entered, each announced as it is made, a checkpoint after each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from migratio.drivers.base import MIGRATION_ID, DestinationImage, Tracker

if TYPE_CHECKING:
    from migratio.drivers.stub.holdings import StubRecord
    from migratio.drivers.stub.site import StubSite

# What a copy is tagged with: ``<image id>><region>``.
COPY_OF = "stub_copy_of"


def distribute(site: StubSite, image: StubRecord, tracker: Tracker) -> tuple[DestinationImage, ...]:
    made = []
    for region in site.copy_regions:
        origin = f"{image.id}>{region}"
        found = [r for r in list(site.records.values()) if r.properties.get(COPY_OF) == origin]
        copy = found[0] if found else _copy(site, image, origin)
        tracker.add_artifact("dest_copy", copy.id)
        made.append(copy)
        tracker.checkpoint()
    return tuple(copy.view() for copy in made)


def _copy(site: StubSite, image: StubRecord, origin: str) -> StubRecord:
    # Untagged with the migration, as an AMI's copy is in a region find_record
    # does not search.
    properties = {k: v for k, v in image.properties.items() if k != MIGRATION_ID}
    properties[COPY_OF] = origin
    copy = site._new_record(image.name, image.disk_format, image.container_format, properties)
    copy.data = bytearray(image.data)
    copy.status = image.status
    return copy
