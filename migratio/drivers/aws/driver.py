"""AWS sites: an image becomes an EBS snapshot and an AMI that boots from it.

Records are EBS snapshots. With ``method: ebs-direct`` (the default) the record
is made by ``StartSnapshot`` and filled block by block (``aws_ebs``); with
``method: import-snapshot`` it is an S3 object that EC2 VM Import turns into a
snapshot (``aws_import``). ``register`` makes the AMI. Everything migratio
creates carries the migration id as a tag, so a resumed run finds it.

A snapshot is reported ``active`` only once migratio finished writing it and
verified what it holds (ebs-direct: every byte of the payload read, holes as
zeros, matched its sha512, and AWS checked each block's SHA256 and the linear
aggregate); its sha512 is then the payload's. A finished imported snapshot is
reported ``pending`` with no sha512: migratio cannot verify what VM Import made,
so ``receive`` only confirms it is finished.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import botocore
import botocore.exceptions
import botocore.loaders

from migratio.config import AwsSite
from migratio.drivers.aws.blocks import GIB, volume_size_gib
from migratio.drivers.aws.ebs import SnapshotWriter
from migratio.drivers.aws.errors import error_code, translated
from migratio.drivers.aws.imports import S3_SCHEME, S3Object, SnapshotImport, prefix_for
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_CS,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    DestinationImage,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
    Transfer,
)
from migratio.errors import ConfigError, NotFound, PermanentError
from migratio.text import one_line

log = logging.getLogger(__name__)

# Set on a snapshot once migratio has finished writing (or importing) it.
COMPLETE_TAG = "migratio_complete"
# The sha512 of the payload a snapshot was verified to hold (ebs-direct only).
PAYLOAD_SHA512 = "migratio_payload_sha512"
NAME_TAG = "Name"
TAG_VALUE_LIMIT = 256
# A pending snapshot that is not written to for this long goes into the error
# state (StartSnapshot's Timeout, 10..4320 minutes); 12 h outlasts a daemon
# outage and the retry policy's whole schedule.
SNAPSHOT_TIMEOUT_MINUTES = 720
ROOT_DEVICE = "/dev/xvda"
# Glance's architecture names -> EC2's.
ARCHITECTURES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "i386",
    "i686": "i386",
}
DEFAULT_ARCHITECTURE = "x86_64"
# RegisterImage accepts 3-128 of these in a name.
AMI_NAME_REFUSED = re.compile(r"[^A-Za-z0-9()\[\] ./'@_-]")
AMI_NAME_LIMIT = 128
# An AMI's state in the engine's words: `pending` is being made available.
AMI_STATUS = {"available": RecordStatus.COMPLETE, "pending": RecordStatus.OPEN}
# Best first: the record an earlier run got furthest with.
STATUS_RANK = {RecordStatus.COMPLETE: 0, RecordStatus.OPEN: 1}
REGISTER_POLL = (0.5, 1.5, 5.0)


class AwsSiteDriver:
    """An AWS region as a destination; images become AMIs.

    site_id: the site's id, named in every error message.
    settings: region, credentials by ``profile`` or boto3's default chain,
        ``endpoint_url`` for emulators, ``method`` (ebs-direct or
        import-snapshot), ``bucket`` (import-snapshot), ``workers`` and ``timeout``.
    clients: already made connections (tests, tools); by default made on first use.
    """

    def __init__(self, site_id: str, settings: AwsSite, clients: AwsClients | None = None) -> None:
        self.site_id = site_id
        self.settings = settings
        self.clients = clients or AwsClients(site_id, settings)
        self.writer = SnapshotWriter(self.clients, settings.workers)
        self.importer = SnapshotImport(self.clients, settings.workers)

    @property
    def imports(self) -> bool:
        return self.settings.method == "import-snapshot"

    # -- destination ------------------------------------------------------------

    @property
    def required_disk_format(self) -> str:
        # ebs-direct reads a raw disk sparsely; VM Import takes a stream-optimized
        # VMDK (S3 has no sparse objects, and that VMDK holds only allocated data).
        return "vmdk" if self.imports else "raw"

    @property
    def wants_file(self) -> bool:
        return True

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        """An available AMI tagged with this source's uuid, site and sha512."""
        wanted = provenance.as_properties()
        for image in self._images(wanted, "find an earlier copy"):
            # Re-checked here: a filter the endpoint did not apply must not match.
            if image.get("State") == "available" and _tags(image).items() >= wanted.items():
                return self._ami_image(image)
        return None

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """The migration's snapshot (furthest along first), else its staged S3
        object (import-snapshot), else an AMI it registered."""
        snapshots = [
            _snapshot_image(snapshot)
            for snapshot in self._snapshots({MIGRATION_ID: migration_id}, "find the record")
        ]
        if snapshots:
            return min(snapshots, key=lambda record: STATUS_RANK.get(record.status, 9))
        if self.imports and (staged := self._staged(migration_id)):
            return DestinationImage(staged.uri, RecordStatus.OPEN, None, None)
        for image in self._images({MIGRATION_ID: migration_id}, "find the record"):
            return self._ami_image(image)
        return None

    def get_record(self, record_id: str) -> DestinationImage | None:
        try:
            if record_id.startswith("snap-"):
                return _snapshot_image(self._snapshot(record_id))
            if record_id.startswith("ami-"):
                return self._ami_image(self._image(record_id))
            if record_id.startswith(S3_SCHEME):
                target = S3Object.parse(record_id)
                if self._staged_at(target):
                    return DestinationImage(target.uri, RecordStatus.OPEN, None, None)
                return None
        except NotFound:
            return None
        raise PermanentError(f"site {self.site_id}: {record_id!r} is not a record of an AWS site")

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        if self.imports:
            if not self.settings.bucket:  # config validation requires it
                raise PermanentError(f"site {self.site_id}: import-snapshot needs a bucket")
            target = S3Object.for_migration(self.settings.bucket, spec.migration_id)
            # Nothing exists at AWS until receive starts the upload.
            return DestinationImage(target.uri, RecordStatus.OPEN, None, spec.size)
        if not spec.size:
            raise PermanentError(f"site {self.site_id}: the payload size must be known")
        tags = {MIGRATION_ID: spec.migration_id, NAME_TAG: _tag_value(spec.name)}
        with translated(self.site_id, "start snapshot"):
            answer = self.clients.ebs.start_snapshot(
                VolumeSize=volume_size_gib(spec.size),
                Tags=_tag_list(tags),
                Description=_tag_value(f"migratio {spec.migration_id}: {spec.name}"),
                Timeout=SNAPSHOT_TIMEOUT_MINUTES,
                # One token per request (AWS asks never to reuse one for another);
                # a crashed run finds its snapshot by the tag, not by the token.
                ClientToken=f"{spec.migration_id}-{time.time_ns():x}"[:64],
            )
        snapshot_id = str(answer["SnapshotId"])
        log.info(
            "site %s: started snapshot %s for migration %s",
            self.site_id,
            snapshot_id,
            spec.migration_id,
        )
        return DestinationImage(
            snapshot_id, RecordStatus.OPEN, None, volume_size_gib(spec.size) * GIB
        )

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        path = transfer.path
        if path is None:
            raise PermanentError(f"site {self.site_id}: receiving needs the payload as a file")
        if record_id.startswith("snap-") and self.imports:
            self._confirm_imported(record_id)
            return None
        if self.imports:
            target = S3Object.parse(record_id)
            migration_id = _migration_of(target)
            snapshot_id = self.importer.run(target, path, transfer, migration_id)
            self._tag(snapshot_id, {MIGRATION_ID: migration_id, COMPLETE_TAG: "true"})
            self._delete_staged(target)
            return None
        sha512 = self.writer.write(record_id, path, transfer)
        self._tag(record_id, {COMPLETE_TAG: "true", PAYLOAD_SHA512: sha512})
        return sha512

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Find the AMI this migration registered (by tag, or by its name after a
        crash before tagging) or register it; tag it either way."""
        if record_id.startswith("ami-"):
            image = self._image(record_id)
            migration_id = _tags(image).get(MIGRATION_ID, "")
            snapshot = self._finished_snapshot(migration_id)
            self._tag(record_id, _ami_tags(registration, migration_id, snapshot))
            return self._available(record_id, snapshot)
        snapshot = self._record_snapshot(record_id)
        migration_id = _tags(snapshot)[MIGRATION_ID]
        tags = _ami_tags(registration, migration_id, snapshot)
        name = ami_name(registration.name, str(registration.properties.get(SOURCE_UUID, "")))
        image_id = self._registered(migration_id, name)
        if image_id is None:
            image_id = self._register(name, registration, snapshot["SnapshotId"], tags)
        self._tag(image_id, tags)
        return self._available(image_id, snapshot)

    def remove(self, record_id: str) -> None:
        if record_id.startswith("ami-"):
            self._deregister(record_id)
        elif record_id.startswith("snap-"):
            self._delete_snapshot(record_id)
        elif record_id.startswith(S3_SCHEME):
            self._delete_staged(S3Object.parse(record_id))
        elif record_id.startswith("import-snap-"):
            self.importer.cancel(record_id)
        else:
            raise PermanentError(f"site {self.site_id}: cannot remove {record_id!r}")

    def close(self) -> None:
        self.clients.close()

    # -- snapshots --------------------------------------------------------------

    def _snapshot(self, snapshot_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe snapshot {snapshot_id}"):
            found = self.clients.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        if not found:
            raise NotFound(f"site {self.site_id}: snapshot {snapshot_id} does not exist")
        return dict(found[0])

    def _snapshots(self, tags: Mapping[str, str], action: str) -> list[dict[str, Any]]:
        with translated(self.site_id, action):
            pages = self.clients.ec2.get_paginator("describe_snapshots").paginate(
                OwnerIds=["self"], Filters=_tag_filters(tags)
            )
            found = [snapshot for page in pages for snapshot in page["Snapshots"]]
        # Newest first, so that among equals the latest attempt wins.
        found.sort(key=lambda snapshot: str(snapshot.get("StartTime")), reverse=True)
        return [s for s in found if _tags(s).items() >= tags.items()]

    def _finished_snapshot(self, migration_id: str) -> dict[str, Any]:
        for snapshot in self._snapshots({MIGRATION_ID: migration_id}, "find the snapshot"):
            if _is_finished(snapshot):
                return snapshot
        raise PermanentError(
            f"site {self.site_id}: migration {migration_id} has no finished snapshot to register"
        )

    def _record_snapshot(self, record_id: str) -> dict[str, Any]:
        """The finished snapshot a record became: itself, or what VM Import made
        of a staged object."""
        if record_id.startswith(S3_SCHEME):
            return self._finished_snapshot(_migration_of(S3Object.parse(record_id)))
        snapshot = self._snapshot(record_id)
        if not _tags(snapshot).get(MIGRATION_ID):
            raise PermanentError(f"site {self.site_id}: snapshot {record_id} is not migratio's")
        if not _is_finished(snapshot):
            raise PermanentError(f"site {self.site_id}: snapshot {record_id} is not finished")
        return snapshot

    def _confirm_imported(self, snapshot_id: str) -> None:
        """An imported snapshot found finished by a resumed run: nothing to send."""
        if not _is_finished(self._snapshot(snapshot_id)):
            raise PermanentError(
                f"site {self.site_id}: snapshot {snapshot_id} is not a finished import"
            )

    def _delete_snapshot(self, snapshot_id: str) -> None:
        try:
            with translated(self.site_id, f"delete snapshot {snapshot_id}"):
                try:
                    self.clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
                    return
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "InvalidSnapshot.InUse":
                        raise
                # An AMI registered from it (one a crash left untracked) goes first.
                migration_id = _tags(self._snapshot(snapshot_id)).get(MIGRATION_ID)
                if migration_id:
                    for image in self._images({MIGRATION_ID: migration_id}, "find its AMIs"):
                        self._deregister(str(image["ImageId"]))
                self.clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
        except NotFound:
            return

    def _tag(self, resource_id: str, tags: Mapping[str, str]) -> None:
        with translated(self.site_id, f"tag {resource_id}"):
            self.clients.ec2.create_tags(Resources=[resource_id], Tags=_tag_list(tags))

    # -- AMIs ----------------------------------------------------------------------

    def _image(self, image_id: str) -> dict[str, Any]:
        with translated(self.site_id, f"describe AMI {image_id}"):
            found = self.clients.ec2.describe_images(ImageIds=[image_id])["Images"]
        if not found:
            raise NotFound(f"site {self.site_id}: AMI {image_id} does not exist")
        return dict(found[0])

    def _images(self, tags: Mapping[str, str], action: str) -> list[dict[str, Any]]:
        return self._describe_images(_tag_filters(tags), action)

    def _describe_images(self, filters: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
        with translated(self.site_id, action):
            images = self.clients.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        return [dict(image) for image in images if image.get("State") != "deregistered"]

    def _registered(self, migration_id: str, name: str) -> str | None:
        """The AMI an earlier run of this migration registered, if any."""
        for image in self._images({MIGRATION_ID: migration_id}, "find the AMI"):
            return str(image["ImageId"])
        named = self._describe_images([{"Name": "name", "Values": [name]}], "find the AMI")
        for image in named:
            owner = _tags(image).get(MIGRATION_ID)
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
        architecture = ec2_architecture(registration.architecture)
        extra: dict[str, Any] = {}
        if architecture == "arm64" or registration.properties.get("hw_firmware_type") == "uefi":
            extra["BootMode"] = "uefi"
        with translated(self.site_id, f"register AMI {name!r}"):
            answer = self.clients.ec2.register_image(
                Name=name,
                Description=_tag_value(
                    f"{registration.name} from image {registration.properties.get(SOURCE_UUID)}"
                    f" at {registration.properties.get(SOURCE_T)}, by migratio"
                ),
                Architecture=architecture,
                RootDeviceName=ROOT_DEVICE,
                VirtualizationType="hvm",
                EnaSupport=True,
                BlockDeviceMappings=[
                    {
                        "DeviceName": ROOT_DEVICE,
                        "Ebs": {
                            "SnapshotId": snapshot_id,
                            "DeleteOnTermination": True,
                            "VolumeType": "gp3",
                        },
                    }
                ],
                TagSpecifications=[{"ResourceType": "image", "Tags": _tag_list(tags)}],
                **extra,
            )
        image_id = str(answer["ImageId"])
        log.info("site %s: registered %s from snapshot %s", self.site_id, image_id, snapshot_id)
        return image_id

    def _available(self, image_id: str, snapshot: Mapping[str, Any]) -> DestinationImage:
        """The AMI once available; still pending after ``timeout``, as pending
        (the registering state retries)."""
        delay, factor, longest = REGISTER_POLL
        deadline = time.monotonic() + self.settings.timeout
        while True:
            image = self._image(image_id)
            if image.get("State") != "pending" or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(longest, delay * factor)
        found = self._ami_image(image)
        if found.status is RecordStatus.BROKEN:
            raise PermanentError(
                f"site {self.site_id}: AMI {image_id} is {image.get('State')}: "
                f"{(image.get('StateReason') or {}).get('Message', 'no reason given')}"
            )
        return DestinationImage(
            found.id,
            found.status,
            _tags(snapshot).get(PAYLOAD_SHA512),
            found.size or _volume_bytes(snapshot),
            found.properties,
            parts=(str(snapshot["SnapshotId"]),),
        )

    def _ami_image(self, image: Mapping[str, Any]) -> DestinationImage:
        tags = _tags(image)
        state = str(image.get("State") or "")
        return DestinationImage(
            id=str(image["ImageId"]),
            status=AMI_STATUS.get(state, RecordStatus.BROKEN),
            sha512=tags.get(PAYLOAD_SHA512),
            size=None,
            properties=tags,
        )

    def _deregister(self, image_id: str) -> None:
        try:
            with translated(self.site_id, f"deregister AMI {image_id}"):
                self.clients.ec2.deregister_image(ImageId=image_id)
        except NotFound:
            return

    # -- staged S3 objects (import-snapshot) --------------------------------------

    def _staged(self, migration_id: str) -> S3Object | None:
        """The newest object or unfinished upload under the migration's prefix."""
        bucket = self.settings.bucket
        if not bucket:
            return None
        prefix = prefix_for(migration_id)
        try:
            with translated(self.site_id, f"list staged uploads of migration {migration_id}"):
                s3 = self.clients.s3
                uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
                objects = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        except NotFound:
            return None
        keys = [str(u["Key"]) for u in uploads.get("Uploads", [])]
        keys += [str(o["Key"]) for o in objects.get("Contents", [])]
        return S3Object(bucket, max(keys)) if keys else None

    def _staged_at(self, target: S3Object) -> bool:
        with translated(self.site_id, f"look for {target.uri}"):
            s3 = self.clients.s3
            uploads = s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
            objects = s3.list_objects_v2(Bucket=target.bucket, Prefix=target.key)
        keys = {u["Key"] for u in uploads.get("Uploads", [])}
        keys |= {o["Key"] for o in objects.get("Contents", [])}
        return target.key in keys

    def _delete_staged(self, target: S3Object) -> None:
        """Abort unfinished uploads to the object and delete it; gone is fine."""
        try:
            with translated(self.site_id, f"remove {target.uri}"):
                s3 = self.clients.s3
                uploads = s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
                for upload in uploads.get("Uploads", []):
                    if upload["Key"] == target.key:
                        try:
                            s3.abort_multipart_upload(
                                Bucket=target.bucket, Key=target.key, UploadId=upload["UploadId"]
                            )
                        except botocore.exceptions.ClientError as exc:
                            if error_code(exc) != "NoSuchUpload":
                                raise
                s3.delete_object(Bucket=target.bucket, Key=target.key)
        except NotFound:
            return


# -- helpers ------------------------------------------------------------------------


def check_region(site_id: str, settings: AwsSite) -> None:
    """Refuse a region botocore does not know, unless an endpoint is given
    (emulators and private endpoints answer for any region name)."""
    if settings.endpoint_url:
        return
    # botocore's own endpoint data, read without a session: no profile or
    # credentials are looked at (a bad AWS_PROFILE must not pass for a bad region).
    endpoints = botocore.loaders.create_loader().load_data("endpoints")
    known = {region for partition in endpoints["partitions"] for region in partition["regions"]}
    if settings.region not in known:
        raise ConfigError(
            site_id,
            "region",
            f"unknown AWS region {settings.region!r} (botocore {botocore.__version__} "
            "knows none by that name; set endpoint_url for a private or newer one)",
        )


def ami_name(image_name: str, source_uuid: str) -> str:
    """``<image name>-<source uuid>`` in the characters RegisterImage accepts."""
    suffix = f"-{source_uuid}" if source_uuid else ""
    name = AMI_NAME_REFUSED.sub("_", image_name)[: AMI_NAME_LIMIT - len(suffix)]
    return (name + suffix).strip() or "migratio-image"


def ec2_architecture(architecture: str | None) -> str:
    if architecture is None:
        return DEFAULT_ARCHITECTURE
    try:
        return ARCHITECTURES[architecture.lower()]
    except KeyError:
        raise PermanentError(f"AWS has no AMIs for architecture {architecture!r}") from None


def _ami_tags(
    registration: Registration, migration_id: str, snapshot: Mapping[str, Any]
) -> dict[str, str]:
    provenance = (SOURCE_UUID, SOURCE_CS, SOURCE_T, SOURCE_SHA512)
    tags = {
        NAME_TAG: _tag_value(registration.name),
        **{
            key: registration.properties[key]
            for key in provenance
            if key in registration.properties
        },
        MIGRATION_ID: migration_id,
    }
    if payload := _tags(snapshot).get(PAYLOAD_SHA512):
        tags[PAYLOAD_SHA512] = payload
    return tags


def _is_finished(snapshot: Mapping[str, Any]) -> bool:
    """Written (or imported) to the end by migratio, and completed by AWS."""
    return _tags(snapshot).get(COMPLETE_TAG) == "true" and snapshot.get("State") == "completed"


def _snapshot_image(snapshot: Mapping[str, Any]) -> DestinationImage:
    tags = _tags(snapshot)
    state = snapshot.get("State")
    finished = _is_finished(snapshot)
    sha512 = tags.get(PAYLOAD_SHA512) if finished else None
    if state == "error":
        status = RecordStatus.BROKEN
    elif finished and sha512:
        status = RecordStatus.COMPLETE
    else:
        # Being written, being completed, or an import migratio cannot verify.
        status = RecordStatus.OPEN
    return DestinationImage(
        id=str(snapshot["SnapshotId"]),
        status=status,
        sha512=sha512,
        size=_volume_bytes(snapshot),
        properties=tags,
    )


def _migration_of(target: S3Object) -> str:
    parts = target.key.split("/")
    if len(parts) != 3 or parts[0] != "migratio":
        raise PermanentError(f"{target.uri} is not an object migratio staged")
    return parts[1]


def _volume_bytes(snapshot: Mapping[str, Any]) -> int | None:
    size = snapshot.get("VolumeSize")
    return int(size) * GIB if size else None


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in resource.get("Tags") or []}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]


def _tag_value(text: str) -> str:
    return one_line(text, TAG_VALUE_LIMIT) if text else text
