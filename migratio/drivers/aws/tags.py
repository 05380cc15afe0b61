"""EC2 tags: how migratio marks what it made, and finds it again after a crash.

Every snapshot, AMI and import task migratio creates carries the migration id
(``MIGRATION_ID``); a snapshot also says when migratio finished it and what it
was verified to hold, which its AMI carries on. Tag values are one line of at
most 256 characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.session import AwsClients
from migratio.text import one_line

# Set on a snapshot once migratio has finished writing (or importing) it.
COMPLETE_TAG = "migratio_complete"
# What an ebs-direct snapshot was verified to hold: its manifest digest
# (blocks.Manifest: SHA-512 over its size and its data blocks' SHA-256s), always.
PAYLOAD_MANIFEST_SHA512 = "migratio_payload_manifest_sha512"
# The sha512 of every byte of the payload, holes as zeros: only when migratio was
# given it and checked it (a payload not converted here). Snapshots finished
# before the manifest existed carry only this one.
PAYLOAD_SHA512 = "migratio_payload_sha512"
PAYLOAD_TAGS = (PAYLOAD_SHA512, PAYLOAD_MANIFEST_SHA512)
# On a snapshot started from an earlier version's (and on its AMI): that
# version's snapshot (``drivers.base.BASE_RECORD``), source image and AMI.
BASE_SOURCE_UUID = "migratio_base_source_uuid"
BASE_AMI = "migratio_base_ami"
NAME_TAG = "Name"
TAG_VALUE_LIMIT = 256


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a described snapshot, AMI or task, as a dict."""
    return {str(t["Key"]): str(t["Value"]) for t in resource.get("Tags") or []}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]


def verified_digest(tags: Mapping[str, str]) -> str | None:
    """What a snapshot or AMI reports as its ``sha512`` to the states: the
    payload's sha512 when migratio checked one (so it equals the payload sha512
    the ledger holds), else its manifest digest (the ledger then holds no payload
    sha512, and ``receive`` reported the same manifest digest)."""
    return tags.get(PAYLOAD_SHA512) or tags.get(PAYLOAD_MANIFEST_SHA512)


def tag_value(text: str) -> str:
    return one_line(text, TAG_VALUE_LIMIT) if text else text


def put_tags(clients: AwsClients, resource_id: str, tags: Mapping[str, str]) -> None:
    """Add (or overwrite) tags on a snapshot or AMI."""
    with translated(clients.site_id, f"tag {resource_id}"):
        clients.ec2.create_tags(Resources=[resource_id], Tags=tag_list(tags))
