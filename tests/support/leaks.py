"""What a migration left behind on each peer, seen from outside migratio.

A run that ends ``done`` must leave exactly its one destination image and
nothing else: no file in the work dir, no unfinished Glance record, no extra
snapshot or AMI, no S3 object or multipart upload under its staging prefix, no
staging file on the SSH host, no qemu-img still running. ``leftovers`` lists
each thing found, one line each, by asking the peers themselves (Glance, moto,
the SSH host's file system, the process table), never migratio's ledger; the
ledger's own view (artifacts still ``present``) is listed too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from migratio.ledger.store import ArtifactStatus, Ledger

if TYPE_CHECKING:  # the peers' SDKs load where a peer is asked (qemu_processes needs none)
    from openstack.connection import Connection

MIGRATION_TAG = "migratio_migration_id"


@dataclass(frozen=True)
class Peers:
    """Where to look: the daemon's work dir, the destination Glance (the SSH
    site registers into one too), moto's EC2 and S3, the SSH host's staging dir."""

    work_dir: Path
    glance: Connection | None = None
    ec2: Any = None
    s3: Any = None
    staging_dir: Path | None = None


def destination_images(peers: Peers, migration_id: str, source_id: str) -> list[str]:
    """Every destination image of this migration or this source, whatever its
    state: Glance images by tag, AMIs by tag or by the name a run that died
    before tagging left (``<name>-<source id>``)."""
    found: list[str] = []
    if peers.glance is not None:
        found += _glance_images(peers.glance, migration_id, source_id)
    if peers.ec2 is not None:
        found += [str(image["ImageId"]) for image in _amis(peers.ec2, migration_id, source_id)]
    return sorted(set(found))


def leftovers(
    peers: Peers, migration_id: str, source_id: str, kept: Iterable[str] = ()
) -> list[str]:
    """What is left beyond ``kept`` (the destination image and its parts)."""
    from tests.support import glance_peer

    keep = set(kept)
    found = [f"work dir file {path}" for path in work_files(peers.work_dir)]
    found += [f"qemu-img still running: pid {pid}" for pid in qemu_processes(peers.work_dir)]
    if peers.glance is not None:
        for image_id in _glance_images(peers.glance, migration_id, source_id):
            image = glance_peer.get(peers.glance, image_id) or {}
            if image_id not in keep or image.get("status") != "active":
                found.append(f"Glance image {image_id} ({image.get('status')})")
    if peers.ec2 is not None:
        found += _aws_leftovers(peers, migration_id, source_id, keep)
    if peers.staging_dir is not None and peers.staging_dir.exists():
        found += [
            f"SSH staging file {path.name}"
            for path in sorted(peers.staging_dir.glob(f"{migration_id}*"))
        ]
    return found


def ledger_leftovers(ledger: Ledger, migration_id: str) -> list[str]:
    """Artifacts the ledger still counts as present (neither kept nor removed)."""
    return [
        f"ledger artifact {artifact.kind} {artifact.ref} still present"
        for artifact in ledger.artifacts(migration_id)
        if artifact.status == ArtifactStatus.PRESENT
    ]


def work_files(work_dir: Path) -> list[Path]:
    """Files in the work dir other than the ledger's own."""
    if not work_dir.exists():
        return []
    return sorted(
        path
        for path in work_dir.rglob("*")
        if path.is_file() and not path.name.startswith("ledger.sqlite")
    )


def qemu_processes(work_dir: Path) -> list[int]:
    """qemu-img processes working on files in ``work_dir`` (orphans of a killed daemon)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        argv = process.info.get("cmdline") or []
        if any("qemu-img" in part for part in argv[:6]) and any(
            str(work_dir) in part for part in argv
        ):
            found.append(int(process.info["pid"]))
    return found


def _glance_images(glance: Connection, migration_id: str, source_id: str) -> list[str]:
    from tests.support import glance_peer

    tagged = glance_peer.find(glance, **{MIGRATION_TAG: migration_id})
    copies = glance_peer.find(glance, source_uuid=source_id)
    return sorted({str(image["id"]) for image in tagged + copies})


def _amis(ec2: Any, migration_id: str, source_id: str) -> list[dict[str, Any]]:
    from tests.support import aws_peer

    tagged = aws_peer.images_of(ec2, **{MIGRATION_TAG: migration_id})
    named = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": [f"*-{source_id}"]}]
    )["Images"]
    unique = {str(image["ImageId"]): image for image in [*tagged, *named]}
    return [image for image in unique.values() if image.get("State") != "deregistered"]


def _aws_leftovers(peers: Peers, migration_id: str, source_id: str, keep: set[str]) -> list[str]:
    from tests.support import aws_peer

    found = []
    for image in _amis(peers.ec2, migration_id, source_id):
        if image["ImageId"] not in keep or image.get("State") != "available":
            found.append(f"AMI {image['ImageId']} ({image.get('State')})")
    for snapshot in aws_peer.snapshots_of(peers.ec2, migration_id):
        if snapshot["SnapshotId"] not in keep or snapshot.get("State") != "completed":
            found.append(f"EBS snapshot {snapshot['SnapshotId']} ({snapshot.get('State')})")
    if peers.s3 is not None:
        prefix = f"migratio/{migration_id}/"
        for bucket in peers.s3.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            listed = peers.s3.list_objects_v2(Bucket=name, Prefix=prefix)
            found += [f"S3 object s3://{name}/{o['Key']}" for o in listed.get("Contents", [])]
            uploads = peers.s3.list_multipart_uploads(Bucket=name, Prefix=prefix)
            found += [
                f"S3 multipart upload s3://{name}/{u['Key']} ({u['UploadId']})"
                for u in uploads.get("Uploads", [])
            ]
    return found
