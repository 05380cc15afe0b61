"""OpenStack → AWS with ``copy_to_regions`` and ``share_with``, through the
daemon: the bed's Glance, its moto (one server answers every region) behind the
tests' front. Done means three available AMIs, all tagged and all in the ledger;
a cancel while the copies are being made removes all three and their snapshots."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from openstack.connection import Connection

from migratio.ledger.store import Ledger
from tests.support import aws_peer, glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

REGIONS = ("eu-central-1", "us-east-1")
ACCOUNT = "210987654321"
MIGRATION_TAG = "migratio_migration_id"


@pytest.fixture(scope="module")
def ec2_in(moto_url: str) -> dict[str, Any]:
    return aws_peer.clients("ec2", moto_url, (aws_peer.REGION, *REGIONS))


@pytest.fixture(scope="module")
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def config(testbed: Any, front: MotoFront, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A daemon whose ``aws-regions`` site copies to two more regions, with its
    own Redis namespace (its feedback is read back)."""
    tmp_path = tmp_path_factory.mktemp("regions")
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "site-a.yml").write_text(
        (testbed.dir / "sites" / "site-a.yml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    aws_peer.write_site(
        sites,
        "aws-regions",
        front.url,
        workers=4,
        copy_to_regions=list(REGIONS),
        share_with=[ACCOUNT],
    )
    return write_daemon_config(tmp_path, sites, namespace=f"regions-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def daemon(config: Path) -> Iterator[Ledger]:
    """One daemon for the module's migrations; its ledger, read in process."""
    running = migratio_cli.start(config, config.parent / "daemon.log")
    yield migratio_cli.ledger_of(config)
    running.send_signal(signal.SIGTERM)
    assert running.wait(30) == 0


def _amis(ec2_in: dict[str, Any], migration_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every region's AMIs tagged with the migration."""
    return {
        region: aws_peer.images_of(ec2, migratio_migration_id=migration_id)
        for region, ec2 in ec2_in.items()
    }


def test_copy_to_regions_makes_three_tagged_amis_all_in_the_ledger(
    config: Path,
    daemon: Ledger,
    site_a: Connection,
    ec2_in: dict[str, Any],
    front: MotoFront,
    tmp_path: Path,
) -> None:
    small = images.random_qcow2(tmp_path / "small.qcow2", 1)
    source_id = glance_peer.upload(site_a, small, name="regional", architecture="x86_64")
    migration_id = migratio_cli.submit(config, source_id, dest="aws-regions")
    done = migratio_cli.wait_for(daemon, migration_id, state="done", timeout=120)

    home_id = done.dest_image_id
    copies = done.dest_copies
    assert home_id is not None and copies is not None
    assert [copy.split("/")[0] for copy in copies] == list(REGIONS)

    # Three AMIs, one per region, each tagged alike (a copy also names its origin).
    found = _amis(ec2_in, migration_id)
    assert [image["ImageId"] for image in found[aws_peer.REGION]] == [home_id]
    home_tags = aws_peer.tags(found[aws_peer.REGION][0])
    assert home_tags["source_uuid"] == source_id and home_tags["Name"] == "regional"
    for copy in copies:
        region, image_id = copy.split("/")
        (image,) = found[region]
        assert image["ImageId"] == image_id and image["State"] == "available"
        assert aws_peer.tags(image) == {
            **home_tags,
            "migratio_copy_of": f"{aws_peer.REGION}/{home_id}",
        }
        granted = ec2_in[region].describe_image_attribute(
            ImageId=image_id, Attribute="launchPermission"
        )
        assert granted["LaunchPermissions"] == [{"UserId": ACCOUNT}]

    # All in the ledger, kept with the result.
    kept = [(a.kind, a.ref) for a in daemon.artifacts(migration_id, status="kept")]
    snapshot_id = (done.transfer_state or {})["snapshot_id"]
    assert kept == [
        ("dest_image", snapshot_id),
        ("dest_image", home_id),
        ("dest_copy", copies[0]),
        ("dest_copy", copies[1]),
    ]
    assert daemon.history(migration_id)[-1].message.endswith(f"; copied as {', '.join(copies)}")
    # CopyImage as asked on the wire (moto ignores the tag specifications).
    asked_for = [c for c in front.ec2_calls("CopyImage") if c["SourceImageId"] == home_id]
    assert len(asked_for) == len(REGIONS)
    for asked in asked_for:
        assert asked["SourceRegion"] == aws_peer.REGION
        assert asked["TagSpecification.1.Tag.1.Key"] in home_tags

    # The platform's last line names every AMI (delivered from the outbox a moment
    # after the transition).
    namespace = yaml.safe_load(config.read_text(encoding="utf-8"))["namespace"]
    assert _last_feedback(f"{namespace}:queue:feedback", source_id) == (
        f"Migration done: image {home_id} at aws-regions; copies {copies[0]}, {copies[1]}"
    )


def _last_feedback(queue: str, source_id: str, timeout: float = 30) -> str:
    """The newest status text for the image once it is a done line (LPUSHed:
    the newest first)."""
    client = redis.Redis.from_url(os.environ["MIGRATIO_REDIS_URL"])
    deadline = time.monotonic() + timeout
    texts: list[str] = []
    while time.monotonic() < deadline:
        jobs = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        texts = [str(job["args"][3]) for job in jobs if job["args"][0] == source_id]
        if texts and texts[0].startswith("Migration done"):
            return texts[0]
        time.sleep(0.1)
    raise TimeoutError(f"no done line for {source_id} in {queue}: {texts[:3]}")


def test_a_cancel_while_copying_removes_all_three_amis_and_their_snapshots(
    config: Path,
    daemon: Ledger,
    site_a: Connection,
    ec2_in: dict[str, Any],
    front: MotoFront,
    tmp_path: Path,
) -> None:
    from migratio import operations
    from migratio.config import load_settings

    ledger = daemon
    small = images.random_qcow2(tmp_path / "small.qcow2", 1)
    source_id = glance_peer.upload(site_a, small, name="regional cancel")
    front.hold_images(*REGIONS)  # the copies stay pending, as at AWS for minutes
    migration_id = migratio_cli.submit(config, source_id, dest="aws-regions")
    try:
        copies = _wait_for_copies(ledger, migration_id, len(REGIONS))
        snapshots = {}
        for copy in copies:  # read past the front: what each copy is made of
            region, image_id = copy.split("/")
            (image,) = ec2_in[region].describe_images(ImageIds=[image_id])["Images"]
            snapshots[region] = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
        assert ledger.get(migration_id).state == "registering"
        operations.cancel(load_settings(config), ledger, migration_id)
        cancelled = migratio_cli.wait_for(ledger, migration_id, state="cancelled", timeout=60)
    finally:
        front.release_images()
    assert ledger.history(migration_id)[-1].from_state == "registering"
    assert cancelled.dest_copies is None
    artifacts = ledger.artifacts(migration_id, status=None)
    assert {a.status for a in artifacts} == {"removed"}
    assert [a.kind for a in artifacts if a.kind != "file"] == [
        "dest_image", "dest_image", "dest_copy", "dest_copy",
    ]  # fmt: skip
    assert _amis(ec2_in, migration_id) == {region: [] for region in ec2_in}
    assert aws_peer.snapshots_of(ec2_in[aws_peer.REGION], migration_id) == []
    for region, snapshot_ids in snapshots.items():
        left = ec2_in[region].describe_snapshots(OwnerIds=["self"])["Snapshots"]
        assert not {s["SnapshotId"] for s in left} & set(snapshot_ids)


def _wait_for_copies(ledger: Any, migration_id: str, count: int) -> list[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        copies = [a.ref for a in ledger.artifacts(migration_id) if a.kind == "dest_copy"]
        if len(copies) == count:
            return copies
        time.sleep(0.1)
    raise TimeoutError(f"{migration_id}: not {count} copies: {ledger.artifacts(migration_id)}")
