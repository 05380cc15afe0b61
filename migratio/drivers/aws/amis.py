"""AMIs: registered from a finished snapshot, tagged, found again, waited for, deregistered.

``RegisterImage`` has no ClientToken and refuses a duplicate name, so an AMI is
found before it is registered: by the migration tag, or by its name when a run
died between registering and tagging. Its provenance tags are what dedup
(``find_copy``) looks for; tags given at registration are set again with
``CreateTags`` (not every endpoint applies TagSpecifications).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from migratio import faults
from migratio.config import AwsSite
from migratio.drivers.aws.ami_boot import register_arguments
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.snapshots import volume_bytes
from migratio.drivers.aws.tags import (
    BASE_AMI,
    BASE_SOURCE_UUID,
    NAME_TAG,
    PAYLOAD_TAGS,
    put_tags,
    tag_filters,
    tag_list,
    tag_value,
    tags_of,
    verified_digest,
)
from migratio.drivers.base import (
    BASE_RECORD,
    MIGRATION_ID,
    SOURCE_CS,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    DestinationImage,
    Provenance,
    RecordStatus,
    Registration,
)
from migratio.errors import NotFound, PermanentError
from migratio.polling import Backoff, poll

log = logging.getLogger(__name__)

# What an AMI says of the earlier version its snapshot started from.
BASE_TAGS = (BASE_RECORD, BASE_SOURCE_UUID, BASE_AMI)
# RegisterImage accepts 3-128 of these in a name.
AMI_NAME_REFUSED = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]")
AMI_NAME_LIMIT = 128
# An AMI's state in the engine's words: `pending` is being made available.
AMI_STATUS = {"available": RecordStatus.COMPLETE, "pending": RecordStatus.OPEN}
# A fresh AMI is usually available within seconds; large ones take minutes,
# and the registering state retries one still pending after the site's timeout.
AVAILABLE_BACKOFF = Backoff(first=0.5, factor=1.5, longest=5.0)


class Amis:
    """The AMIs of one site.

    clients: the site's connections; only ``ec2`` is used.
    timeout: how long ``register`` waits for an AMI to become available before
        reporting it still pending (the site's ``timeout``).
    settings: the site's; how an AMI boots where the image does not say (``ami_boot``).
    """

    def __init__(self, clients: AwsClients, timeout: float, settings: AwsSite) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.timeout = timeout
        self.settings = settings

    def get(self, image_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe AMI {image_id}"):
            found = self.clients.ec2.describe_images(ImageIds=[image_id])["Images"]
        if not found:
            raise NotFound(f"site {self.site_id}: AMI {image_id} does not exist")
        return dict(found[0])

    def tagged(self, tags: Mapping[str, str], action: str) -> list[dict[str, Any]]:
        return self._described(tag_filters(tags), action)

    def copy_of(self, provenance: Provenance) -> DestinationImage | None:
        """An available AMI tagged with this source's uuid, site and sha512."""
        wanted = provenance.as_properties()
        for image in self.tagged(wanted, "find an earlier copy"):
            # Re-checked here: a filter the endpoint did not apply must not match.
            if image.get("State") == "available" and tags_of(image).items() >= wanted.items():
                return ami_image(image)
        return None

    def of_migration(self, migration_id: str) -> DestinationImage | None:
        for image in self.tagged({MIGRATION_ID: migration_id}, "find the record"):
            return ami_image(image)
        return None

    def register(self, snapshot: Mapping[str, Any], registration: Registration) -> DestinationImage:
        """The AMI of the migration that made ``snapshot``: found (by tag, or by its
        name after a crash before tagging) or registered; tagged either way."""
        migration_id = tags_of(snapshot)[MIGRATION_ID]
        tags = ami_tags(registration, migration_id, snapshot)
        name = ami_name(registration.name, str(registration.properties.get(SOURCE_UUID, "")))
        image_id = self._registered(migration_id, name)
        if image_id is None:
            image_id = self._register(name, registration, str(snapshot["SnapshotId"]), tags)
            faults.point("aws.image_registered")
        put_tags(self.clients, image_id, tags)
        return self.available(image_id, snapshot)

    def retag(
        self, image_id: str, registration: Registration, snapshot: Mapping[str, Any]
    ) -> DestinationImage:
        """An AMI already registered (registering re-entered with its id): tag it again."""
        migration_id = tags_of(snapshot).get(MIGRATION_ID, "")
        put_tags(self.clients, image_id, ami_tags(registration, migration_id, snapshot))
        return self.available(image_id, snapshot)

    def migration_of(self, image_id: str) -> str:
        """The migration id an AMI is tagged with ("" when it has none)."""
        return tags_of(self.get(image_id)).get(MIGRATION_ID, "")

    def available(self, image_id: str, snapshot: Mapping[str, Any]) -> DestinationImage:
        """The AMI once available; still pending after ``timeout``, as pending
        (the registering state retries)."""
        image = poll(
            lambda: self._settled(image_id), AVAILABLE_BACKOFF, timeout=self.timeout
        ) or self.get(image_id)
        found = ami_image(image)
        if found.status is RecordStatus.BROKEN:
            raise PermanentError(
                f"site {self.site_id}: AMI {image_id} is {image.get('State')}: "
                f"{(image.get('StateReason') or {}).get('Message', 'no reason given')}"
            )
        return DestinationImage(
            found.id,
            found.status,
            verified_digest(tags_of(snapshot)),
            found.size or volume_bytes(snapshot),
            found.properties,
            parts=(str(snapshot["SnapshotId"]),),
        )

    def deregister(self, image_id: str) -> None:
        """Deregister the AMI; gone is fine."""
        try:
            with translated(self.site_id, f"deregister AMI {image_id}"):
                self.clients.ec2.deregister_image(ImageId=image_id)
        except NotFound:
            return

    def deregister_migration(self, migration_id: str) -> None:
        """Deregister every AMI the migration registered (to free its snapshot)."""
        for image in self.tagged({MIGRATION_ID: migration_id}, "find its AMIs"):
            self.deregister(str(image["ImageId"]))

    def _settled(self, image_id: str) -> dict[str, Any] | None:
        image = self.get(image_id)
        return None if image.get("State") == "pending" else image

    def _described(self, filters: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
        with translated(self.site_id, action):
            images = self.clients.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        return [dict(image) for image in images if image.get("State") != "deregistered"]

    def _registered(self, migration_id: str, name: str) -> str | None:
        """The AMI an earlier run of this migration registered, if any."""
        for image in self.tagged({MIGRATION_ID: migration_id}, "find the AMI"):
            return str(image["ImageId"])
        for image in self._described([{"Name": "name", "Values": [name]}], "find the AMI"):
            owner = tags_of(image).get(MIGRATION_ID)
            if owner is None:  # registered, then the run died before tagging it
                return str(image["ImageId"])
            raise PermanentError(
                f"site {self.site_id}: an AMI named {name!r} already exists "
                f"({image['ImageId']}, from migration {owner})"
            )
        return None

    def _register(
        self, name: str, registration: Registration, snapshot_id: str, tags: Mapping[str, str]
    ) -> str:
        boot = register_arguments(
            registration.architecture, registration.properties, self.settings, snapshot_id
        )
        with translated(self.site_id, f"register AMI {name!r}"):
            answer = self.clients.ec2.register_image(
                Name=name,
                Description=tag_value(
                    f"{registration.name} from image {registration.properties.get(SOURCE_UUID)}"
                    f" at {registration.properties.get(SOURCE_T)}, by migratio"
                ),
                TagSpecifications=[{"ResourceType": "image", "Tags": tag_list(tags)}],
                **boot,
            )
        image_id = str(answer["ImageId"])
        log.info("site %s: registered %s from snapshot %s", self.site_id, image_id, snapshot_id)
        return image_id


def ami_image(image: Mapping[str, Any]) -> DestinationImage:
    """A described AMI as a record, in the engine's words."""
    tags = tags_of(image)
    return DestinationImage(
        id=str(image["ImageId"]),
        status=AMI_STATUS.get(str(image.get("State") or ""), RecordStatus.BROKEN),
        sha512=verified_digest(tags),
        size=None,
        properties=tags,
    )


def ami_tags(
    registration: Registration, migration_id: str, snapshot: Mapping[str, Any]
) -> dict[str, str]:
    """Name, provenance (what ``copy_of`` finds it by), migration id, what the
    snapshot was verified to hold (its payload tags) and the earlier version it
    was started from, if any (its base tags)."""
    properties = registration.properties
    provenance = Provenance(
        properties.get(SOURCE_UUID, ""),
        properties.get(SOURCE_T, ""),
        properties.get(SOURCE_SHA512, ""),
    )
    tags = {NAME_TAG: tag_value(registration.name)}
    # An image whose sha512 the source did not know has no sha512 tag (not an empty one).
    tags |= {key: value for key, value in provenance.as_properties().items() if value}
    if SOURCE_CS in properties:  # the legacy tool's name for the source site
        tags[SOURCE_CS] = properties[SOURCE_CS]
    tags[MIGRATION_ID] = migration_id
    verified = tags_of(snapshot)
    tags |= {key: verified[key] for key in (*PAYLOAD_TAGS, *BASE_TAGS) if verified.get(key)}
    return tags


def ami_name(image_name: str, source_uuid: str) -> str:
    """``<image name>-<source uuid>`` in the characters RegisterImage accepts."""
    suffix = f"-{source_uuid}" if source_uuid else ""
    name = AMI_NAME_REFUSED.sub("_", image_name)[: AMI_NAME_LIMIT - len(suffix)]
    return (name + suffix).strip() or "migratio-image"
