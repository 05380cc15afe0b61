"""The AMI's copies in other regions (``copy_to_regions``): made by CopyImage,
found again, waited for, shared, removed with their snapshots.

A copy carries the AMI's tags and ``migratio_copy_of`` (``<region>/<ami id>``
of the AMI it copies), by which a re-entered registering finds it; its
ClientToken is derived from the same, so AWS answers a repeated CopyImage with
the copy it already made. A copy is announced to the tracker (the ledger's
artifacts) as soon as CopyImage answers, so a cancel while it is being made
removes it. Removing one deregisters it and deletes its snapshots: they are
tagged ``migratio_image`` = the copy first, so a removal interrupted after
deregistering still finds them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from migratio import faults
from migratio.config import AwsSite
from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.records import RegionalAmiRef
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.sharing import share_image, snapshot_ids
from migratio.drivers.aws.tags import tag_filters, tag_list, tags_of
from migratio.drivers.base import DestinationImage, RecordStatus, Tracker
from migratio.errors import NotFound, PermanentError
from migratio.polling import Backoff, poll

log = logging.getLogger(__name__)

COPY_OF_TAG = "migratio_copy_of"
COPY_SNAPSHOT_TAG = "migratio_image"
# What the ledger calls a copy among a migration's artifacts.
ARTIFACT_KIND = "dest_copy"
# A copy takes minutes to hours (the snapshots cross regions); no deadline (AWS
# fails a copy itself), each wait a checkpoint.
COPY_BACKOFF = Backoff(first=1.0, factor=1.5, longest=30.0)
COPY_STATUS = {"available": RecordStatus.COMPLETE, "pending": RecordStatus.OPEN}


class RegionalCopies:
    """The copies of one site's AMIs in its ``copy_to_regions``.

    clients: the site's connections (EC2 in each region).
    settings: the site's regions, encryption and ``share_with``.
    """

    def __init__(self, clients: AwsClients, settings: AwsSite) -> None:
        self.clients = clients
        self.settings = settings
        self.site_id = clients.site_id

    def make(self, home: Mapping[str, Any], tracker: Tracker) -> tuple[DestinationImage, ...]:
        """Every region's copy of the described AMI, made or found, once all are
        available and shared."""
        refs = [self._copy(home, region, tracker) for region in self.settings.copy_to_regions]
        copies = []
        for ref in refs:
            image = self._available(ref, tracker)
            self._mark_snapshots(ref, image)
            share_image(self.site_id, self._ec2(ref), image, self.settings.share_with)
            copies.append(
                DestinationImage(
                    ref.id,
                    RecordStatus.COMPLETE,
                    None,
                    None,
                    tags_of(image),
                    parts=tuple(f"{ref.region}/{s}" for s in snapshot_ids(image)),
                )
            )
        return tuple(copies)

    def remove(self, ref: RegionalAmiRef) -> None:
        """Deregister the copy and delete its snapshots; gone is fine."""
        ec2 = self._ec2(ref)
        image = self.described(ref)
        snapshots = set(snapshot_ids(image)) if image else set()
        if snapshots:
            self._tag(ec2, sorted(snapshots), {COPY_SNAPSHOT_TAG: ref.image_id})
        snapshots |= self._marked_snapshots(ref)
        if image is not None:
            try:
                with translated(self.site_id, f"deregister AMI {ref.id}"):
                    ec2.deregister_image(ImageId=ref.image_id)
            except NotFound:
                pass
        for snapshot_id in sorted(snapshots):
            try:
                with translated(self.site_id, f"delete snapshot {ref.region}/{snapshot_id}"):
                    ec2.delete_snapshot(SnapshotId=snapshot_id)
            except NotFound:
                pass
        log.info("site %s: removed copy %s and %d snapshots", self.site_id, ref.id, len(snapshots))

    def _copy(self, home: Mapping[str, Any], region: str, tracker: Tracker) -> RegionalAmiRef:
        home_id = str(home["ImageId"])
        origin = f"{self.settings.region}/{home_id}"
        ec2 = self.clients.ec2_in(region)
        with translated(self.site_id, f"find the copy of {home_id} in {region}"):
            found = ec2.describe_images(
                Owners=["self"], Filters=tag_filters({COPY_OF_TAG: origin})
            )["Images"]
        for image in found:
            if image.get("State") != "deregistered" and tags_of(image).get(COPY_OF_TAG) == origin:
                ref = RegionalAmiRef(region, str(image["ImageId"]))
                tracker.add_artifact(ARTIFACT_KIND, ref.id)
                return ref
        tags = {**tags_of(home), COPY_OF_TAG: origin}
        with translated(self.site_id, f"copy AMI {home_id} to {region}"):
            answer = ec2.copy_image(
                SourceImageId=home_id,
                SourceRegion=self.settings.region,
                Name=str(home.get("Name") or home_id),
                Description=str(home.get("Description") or f"copy of {origin}")[:255],
                ClientToken=hashlib.sha256(f"{origin}>{region}".encode()).hexdigest()[:64],
                TagSpecifications=[
                    {"ResourceType": "image", "Tags": tag_list(tags)},
                    {"ResourceType": "snapshot", "Tags": tag_list(tags)},
                ],
                **self._encryption(region),
            )
        ref = RegionalAmiRef(region, str(answer["ImageId"]))
        tracker.add_artifact(ARTIFACT_KIND, ref.id)
        faults.point("aws.image_copied")
        # Not every endpoint applies TagSpecifications (moto does not).
        self._tag(ec2, [ref.image_id], tags)
        log.info("site %s: copying AMI %s to %s as %s", self.site_id, home_id, region, ref.id)
        return ref

    def _encryption(self, region: str) -> dict[str, Any]:
        # A key belongs to one region: the site's own key cannot encrypt a copy.
        if not self.settings.encrypts:
            return {}
        key = self.settings.copy_kms_key_ids.get(region)
        return {"Encrypted": True, **({"KmsKeyId": key} if key else {})}

    def _available(self, ref: RegionalAmiRef, tracker: Tracker) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            image = self.described(ref)
            if image is None:
                raise PermanentError(f"site {self.site_id}: copy {ref.id} has disappeared")
            status = COPY_STATUS.get(str(image.get("State")), RecordStatus.BROKEN)
            if status is RecordStatus.BROKEN:
                reason = (image.get("StateReason") or {}).get("Message", "no reason given")
                raise PermanentError(
                    f"site {self.site_id}: copy {ref.id} is {image.get('State')}: {reason}"
                )
            return image if status is RecordStatus.COMPLETE else None

        image = poll(settled, COPY_BACKOFF, between=tracker.checkpoint)
        assert image is not None  # no deadline: poll returns only with an answer
        return image

    def _mark_snapshots(self, ref: RegionalAmiRef, image: Mapping[str, Any]) -> None:
        """Tag the copy's snapshots with it (and its tags), for removal and audit."""
        snapshots = snapshot_ids(image)
        if snapshots:
            tags = {**tags_of(image), COPY_SNAPSHOT_TAG: ref.image_id}
            self._tag(self._ec2(ref), snapshots, tags)

    def _marked_snapshots(self, ref: RegionalAmiRef) -> set[str]:
        with translated(self.site_id, f"find the snapshots of {ref.id}"):
            found = self._ec2(ref).describe_snapshots(
                OwnerIds=["self"], Filters=tag_filters({COPY_SNAPSHOT_TAG: ref.image_id})
            )["Snapshots"]
        return {
            str(s["SnapshotId"]) for s in found if tags_of(s).get(COPY_SNAPSHOT_TAG) == ref.image_id
        }

    def described(self, ref: RegionalAmiRef) -> dict[str, Any] | None:
        try:
            with translated(self.site_id, f"describe AMI {ref.id}"):
                found = self._ec2(ref).describe_images(ImageIds=[ref.image_id])["Images"]
        except NotFound:
            return None
        image = dict(found[0]) if found else None
        return None if image is None or image.get("State") == "deregistered" else image

    def _tag(self, ec2: Any, resources: list[str], tags: Mapping[str, str]) -> None:
        with translated(self.site_id, f"tag {', '.join(resources)}"):
            ec2.create_tags(Resources=resources, Tags=tag_list(tags))

    def _ec2(self, ref: RegionalAmiRef) -> Any:
        return self.clients.ec2_in(ref.region)
