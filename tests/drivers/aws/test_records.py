"""AWS record ids parsed once into typed references, and the tags an AMI carries."""

from __future__ import annotations

import pytest

from migratio.drivers.aws.amis import ami_tags
from migratio.drivers.aws.records import (
    AmiRef,
    ImportTaskRef,
    RegionalAmiRef,
    SnapshotRef,
    StagedObjectRef,
    parse_record,
)
from migratio.drivers.base import (
    MIGRATION_ID,
    SOURCE_CS,
    SOURCE_SHA512,
    SOURCE_T,
    SOURCE_UUID,
    Registration,
)
from migratio.errors import PermanentError


@pytest.mark.parametrize(
    ("record_id", "expected"),
    [
        ("snap-0123456789abcdef0", SnapshotRef("snap-0123456789abcdef0")),
        ("ami-0abc1234", AmiRef("ami-0abc1234")),
        ("import-snap-0abc1234def56789", ImportTaskRef("import-snap-0abc1234def56789")),
        (
            "s3://bucket/migratio/m-1/20250101T000000000000001.vmdk",
            StagedObjectRef("bucket", "migratio/m-1/20250101T000000000000001.vmdk"),
        ),
        ("eu-central-1/ami-0abc1234", RegionalAmiRef("eu-central-1", "ami-0abc1234")),
        ("us-gov-west-1/ami-0abc1234", RegionalAmiRef("us-gov-west-1", "ami-0abc1234")),
    ],
)
def test_record_ids_parse_into_their_reference(record_id: str, expected: object) -> None:
    parsed = parse_record("aws-a", record_id)
    assert parsed == expected
    assert parsed.id == record_id  # and back to the very same string


@pytest.mark.parametrize(
    "record_id",
    [
        "",
        "snap-",
        "snap-0abc/../x",
        "xsnap-0abc",
        "ami-0ABC",
        "vol-0abc",
        "import-ami-0abc",
        "s3://bucket",
        "s3:///key",
        "eu-central-1/snap-0abc",
        "eu-central-1/ami-0abc/x",
        "EU-central-1/ami-0abc",
        "076ea369-183c-4fdd-b37d-5b0e1c3aa9d6",  # a Glance image id
    ],
)
def test_an_id_that_names_nothing_on_an_aws_site_is_refused(record_id: str) -> None:
    with pytest.raises(PermanentError, match=r"^site aws-a: .* is not a record of an AWS site$"):
        parse_record("aws-a", record_id)


def test_a_staged_object_knows_its_migration() -> None:
    staged = StagedObjectRef.for_migration("bucket", "m-1")
    assert staged.migration_id == "m-1" and staged.key.startswith("migratio/m-1/")
    assert parse_record("aws-a", staged.id) == staged
    with pytest.raises(PermanentError, match="is not an object migratio staged"):
        _ = StagedObjectRef("bucket", "elsewhere/m-1/x.vmdk").migration_id


def _registration(**provenance: str) -> Registration:
    return Registration(
        name="tiny\nimage",
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        architecture=None,
        properties={**provenance, "os_distro": "ubuntu"},
    )


def test_ami_tags_are_name_provenance_migration_and_payload() -> None:
    registration = _registration(
        **{SOURCE_UUID: "u-1", SOURCE_CS: "site-a", SOURCE_T: "site-a", SOURCE_SHA512: "f" * 128}
    )
    snapshot = {"Tags": [{"Key": "migratio_payload_sha512", "Value": "e" * 128}]}
    assert ami_tags(registration, "m-1", snapshot) == {
        "Name": "tiny image",
        SOURCE_UUID: "u-1",
        SOURCE_CS: "site-a",
        SOURCE_T: "site-a",
        SOURCE_SHA512: "f" * 128,
        MIGRATION_ID: "m-1",
        "migratio_payload_sha512": "e" * 128,
    }
    # A source that did not know its sha512, and a snapshot that was imported.
    unverified = _registration(**{SOURCE_UUID: "u-1", SOURCE_CS: "site-a", SOURCE_T: "site-a"})
    assert ami_tags(unverified, "m-1", {}) == {
        "Name": "tiny image",
        SOURCE_UUID: "u-1",
        SOURCE_CS: "site-a",
        SOURCE_T: "site-a",
        MIGRATION_ID: "m-1",
    }
