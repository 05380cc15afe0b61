"""Sharing an AMI and copying it to other regions, against the bed's moto
through the tests' front: launch and create-volume permissions as EC2 keeps
them, CopyImage as asked on the wire, copies tagged, found again, waited for
and removed with their snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from migratio.drivers.aws import copies as aws_copies
from migratio.drivers.base import MIGRATION_ID, DestinationImage
from migratio.errors import CancelRequested
from migratio.polling import Backoff
from tests.drivers.aws.site_helpers import (
    RecordingTracker,
    registered_ami,
    site_driver,
    six_block_disk,
)
from tests.support import aws_peer
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

ACCOUNT = "210987654321"
ORGANISATION = "arn:aws:organizations::123456789012:organization/o-a1b2c3d4e5"
UNIT = "arn:aws:organizations::123456789012:ou/o-a1b2c3d4e5/ou-ab12-cd34ef56"
REGIONS = ("eu-central-1", "us-east-1")


@pytest.fixture
def front(moto_url: str) -> Iterator[MotoFront]:
    running = MotoFront(moto_url).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ec2_in(moto_url: str) -> dict[str, Any]:
    """The tests' own EC2 clients, one per region."""
    return aws_peer.clients("ec2", moto_url, (aws_peer.REGION, *REGIONS))


def test_the_ami_and_its_copies_are_shared_tagged_and_removed_with_their_snapshots(
    front: MotoFront, ec2_in: dict[str, Any], tmp_path: Path
) -> None:
    driver = site_driver(front, share_with=[ACCOUNT, ORGANISATION, UNIT], copy_to_regions=REGIONS)
    tracker = RecordingTracker()
    try:
        snapshot_id, ami = registered_ami(driver, six_block_disk(tmp_path / "disk.raw"))
        copies = driver.distribute(ami.id, tracker)
        assert (
            driver.distribute(ami.id, RecordingTracker()) == copies
        )  # found again, not copied twice
        assert tracker.artifacts == [("dest_copy", copy.id) for copy in copies]
        _check_copies(front, ec2_in, snapshot_id, ami, copies)
        for copy in copies:
            driver.remove(copy.id)
            driver.remove(copy.id)  # gone is fine
            assert driver.get_record(copy.id) is None
    finally:
        driver.close()
    for copy in copies:
        region = copy.id.split("/")[0]
        for part in copy.parts:
            with pytest.raises(botocore.exceptions.ClientError, match=r"InvalidSnapshot\.NotFound"):
                ec2_in[region].describe_snapshots(SnapshotIds=[part.split("/")[1]])


def _check_copies(
    front: MotoFront,
    ec2_in: dict[str, Any],
    snapshot_id: str,
    ami: DestinationImage,
    copies: tuple[DestinationImage, ...],
) -> None:
    assert [copy.id.split("/")[0] for copy in copies] == list(REGIONS)
    assert len(front.ec2_calls("CopyImage")) == 2

    home = ec2_in[aws_peer.REGION]
    (described,) = home.describe_images(ImageIds=[ami.id])["Images"]
    home_tags = aws_peer.tags(described)
    for copy, region, asked in zip(copies, REGIONS, front.ec2_calls("CopyImage"), strict=True):
        image_id = copy.id.split("/")[1]
        assert (asked["SourceImageId"], asked["SourceRegion"]) == (ami.id, aws_peer.REGION)
        assert asked["TagSpecification.1.ResourceType"] == "image"
        assert asked["TagSpecification.2.ResourceType"] == "snapshot"
        (image,) = ec2_in[region].describe_images(ImageIds=[image_id])["Images"]
        assert aws_peer.tags(image) == {
            **home_tags,
            "migratio_copy_of": f"{aws_peer.REGION}/{ami.id}",
        }
        assert copy.parts and all(part.startswith(f"{region}/snap-") for part in copy.parts)

    # Launch permissions, as EC2 keeps them, on the AMI and each copy; the
    # snapshot's create-volume permission for the account only.
    everyone = [
        {"UserId": ACCOUNT},
        {"OrganizationArn": ORGANISATION},
        {"OrganizationalUnitArn": UNIT},
    ]
    for region, image_id in [(aws_peer.REGION, ami.id)] + [
        tuple(copy.id.split("/")) for copy in copies
    ]:
        granted = ec2_in[region].describe_image_attribute(
            ImageId=image_id, Attribute="launchPermission"
        )
        assert sorted(granted["LaunchPermissions"], key=str) == sorted(everyone, key=str)
    shared = [c["SnapshotId"] for c in front.ec2_calls("ModifySnapshotAttribute")]
    assert snapshot_id in shared
    for call in front.ec2_calls("ModifySnapshotAttribute"):
        assert (call["OperationType"], call["UserId.1"]) == ("add", ACCOUNT)
        assert not any("Organization" in key for key in call)
    volume = home.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )
    assert volume["CreateVolumePermissions"] == [{"UserId": ACCOUNT}]


def test_a_copy_still_pending_is_waited_for_at_checkpoints(
    front: MotoFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_copies, "COPY_BACKOFF", Backoff(first=0.05, factor=1.0, longest=0.05))
    driver = site_driver(front, copy_to_regions=REGIONS[:1])
    front.hold_images(REGIONS[0])
    tracker = RecordingTracker(cancel_after=2)
    try:
        _, ami = registered_ami(driver, six_block_disk(tmp_path / "disk.raw"))
        with pytest.raises(CancelRequested):
            driver.distribute(ami.id, tracker)
        ((_, copy_id),) = tracker.artifacts
        pending = driver.get_record(copy_id)
        assert pending is not None and pending.status == "open"
        front.release_images()
        (copy,) = driver.distribute(ami.id, RecordingTracker())
        assert copy.id == copy_id and copy.is_complete
        assert copy.properties[MIGRATION_ID] == ami.properties[MIGRATION_ID]
    finally:
        driver.close()
