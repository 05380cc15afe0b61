"""Sharing a finished AMI (``share_with``): launch permissions, and the
create-volume permission of its snapshots.

An AMI's launch permission takes account ids, organisation ARNs and
organisational unit ARNs. A snapshot's create-volume permission takes account
ids only (ModifySnapshotAttribute has no organisation field), so an
organisation or OU is given the AMI alone: its accounts can launch it (EC2 does
not ask for the snapshot's permission to launch a shared AMI) but cannot copy
the AMI or make volumes from the snapshot directly. Both calls only add, so a
repeated share (a re-entered registering) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from migratio.drivers.aws.errors import translated

ORGANISATION = ":organization/"
ORGANISATIONAL_UNIT = ":ou/"


def launch_permissions(principals: Iterable[str]) -> list[dict[str, str]]:
    """ModifyImageAttribute's ``LaunchPermission.Add`` entries, one per principal."""
    entries = []
    for principal in principals:
        if ORGANISATIONAL_UNIT in principal:
            entries.append({"OrganizationalUnitArn": principal})
        elif ORGANISATION in principal:
            entries.append({"OrganizationArn": principal})
        else:
            entries.append({"UserId": principal})
    return entries


def accounts(principals: Iterable[str]) -> list[str]:
    """The account ids among the principals (what a snapshot can be shared with)."""
    return [p for p in principals if ORGANISATION not in p and ORGANISATIONAL_UNIT not in p]


def share_image(
    site_id: str,
    ec2: Any,
    image: Mapping[str, Any],
    principals: tuple[str, ...],
    snapshots: Iterable[str] = (),
) -> None:
    """Let ``principals`` launch the described AMI, and its accounts make volumes
    of its snapshots (those its description names, and ``snapshots``)."""
    if not principals:
        return
    image_id = str(image["ImageId"])
    with translated(site_id, f"share AMI {image_id}"):
        ec2.modify_image_attribute(
            ImageId=image_id, LaunchPermission={"Add": launch_permissions(principals)}
        )
    users = accounts(principals)
    if not users:
        return
    for snapshot_id in dict.fromkeys([*snapshot_ids(image), *snapshots]):
        with translated(site_id, f"share snapshot {snapshot_id}"):
            ec2.modify_snapshot_attribute(
                SnapshotId=snapshot_id,
                Attribute="createVolumePermission",
                OperationType="add",
                UserIds=users,
            )


def snapshot_ids(image: Mapping[str, Any]) -> list[str]:
    """The snapshots a described AMI's block devices are made from."""
    found = []
    for mapping in image.get("BlockDeviceMappings") or []:
        snapshot_id = (mapping.get("Ebs") or {}).get("SnapshotId")
        if snapshot_id:
            found.append(str(snapshot_id))
    return found
