"""One UEFI + TPM 2.0 arm64 template with Glance tags and members, migrated by the
daemon to a Glance site (shared with the site file's members) and to AWS: the
destination Glance record and the RegisterImage request seen on the wire (moto
ignores its boot fields, so the front records them), field by field against the
source (docs/image-fidelity.md quotes the table this test prints).

Set ``MIGRATIO_FIDELITY_OUT`` to a file to have the table written there too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection

from migratio import operations, reports
from migratio.config import load_settings
from tests.support import aws_peer, glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.moto_front import MotoFront

pytestmark = pytest.mark.testbed

JSON_PATCH = "application/openstack-images-v2.1-json-patch"
SIGNATURE = {
    "img_signature": "c2lnbmVkIGJ5IHRoZSBzb3VyY2U=",
    "img_signature_hash_method": "SHA-256",
    "img_signature_key_type": "RSA-PSS",
    "img_signature_certificate_uuid": "0b5c3f4e-7a2d-4c1e-9f6b-2d8e1a3c5b7f",
}
PROPERTIES = {
    "hw_firmware_type": "uefi",
    "hw_tpm_version": "2.0",
    "hw_tpm_model": "tpm-crb",
    "hw_vif_model": "virtio",
    "os_type": "linux",
    "os_distro": "ubuntu",
    "os_version": "24.04",
    "img_config_drive": "mandatory",
    **SIGNATURE,
}
FIELDS = {"architecture": "aarch64", "min_disk": 1, "min_ram": 256}
TAGS = ["golden", "ubuntu-24.04-arm64"]
SOURCE_MEMBER = "a0a0a0a0b1b1c2c2d3d3e4e4e4e4e4e4"  # a project of site-a's cloud
DEST_MEMBERS = ["f1f1f1f1e2e2d3d3c4c4b5b5b5b5b5b5", "0c0c0c0c1d1d2e2e3f3f404040404040"]
# The AWS site: IMDSv2 required, SR-IOV read from the image; the rest defaults.
AWS_SETTINGS = {"imds_support": "v2.0", "sriov_net_support": "auto"}


@dataclass(frozen=True)
class Migrated:
    source: dict[str, Any]
    source_members: list[str]
    glance: dict[str, Any]
    glance_members: list[str]
    glance_shown: dict[str, Any]
    register: dict[str, str]
    aws_shown: dict[str, Any]


def _create(conn: Connection, path: Path, body: dict[str, Any]) -> str:
    """A source image made by raw Image API calls, exactly as written here
    (the SDK would retype hw_* values and add properties of its own). The
    signature is set after the upload: Glance verifies one present at upload
    time, against a certificate in its key manager, which the bed has not."""
    signature = {key: body.pop(key) for key in list(body) if key in SIGNATURE}
    response = conn.image.post("/images", json=body)
    response.raise_for_status()
    image_id = str(response.json()["id"])
    with path.open("rb") as data:
        put = conn.image.put(
            f"/images/{image_id}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    put.raise_for_status()
    glance_peer.wait_active(conn, image_id)
    patch = [{"op": "add", "path": f"/{key}", "value": value} for key, value in signature.items()]
    conn.image.patch(f"/images/{image_id}", json=patch, headers={"Content-Type": JSON_PATCH})
    return image_id


def _members(conn: Connection, image_id: str) -> list[str]:
    response = conn.image.get(f"/images/{image_id}/members")
    response.raise_for_status()
    return sorted(str(member["member_id"]) for member in response.json()["members"])


def _unprotect_and_delete(conn: Connection, image_id: str) -> None:
    conn.image.patch(
        f"/images/{image_id}",
        json=[{"op": "replace", "path": "/protected", "value": False}],
        headers={"Content-Type": JSON_PATCH},
    )
    glance_peer.delete(conn, image_id)


@pytest.fixture(scope="module")
def migrated(
    testbed: Any, site_a: Connection, site_b: Connection, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Migrated]:
    directory = tmp_path_factory.mktemp("fidelity")
    front = MotoFront(str(testbed.env["MIGRATIO_MOTO_URL"])).start()
    sites = directory / "sites"
    sites.mkdir()
    shutil.copy(testbed.dir / "sites" / "site-a.yml", sites)
    glance_site = {
        "type": "openstack",
        "cloud": "site-b",
        "disk_format": "raw",
        "visibility": "shared",
        "members": DEST_MEMBERS,
    }
    (sites / "site-b-shared.yml").write_text(yaml.safe_dump(glance_site), encoding="utf-8")
    aws_peer.write_site(sites, "aws-boot", front.url, **AWS_SETTINGS)
    config = write_daemon_config(directory, sites)

    disk = images.random_qcow2(directory / "uefi-arm64.qcow2", 1)
    body = {
        "name": "ubuntu-24.04-uefi-arm64",
        "disk_format": "qcow2",
        "container_format": "bare",
        "visibility": "shared",
        "protected": True,
        "tags": TAGS,
        **FIELDS,
        **PROPERTIES,
    }
    source_id = _create(site_a, disk, dict(body))
    site_a.image.post(f"/images/{source_id}/members", json={"member": SOURCE_MEMBER})

    # Submitted and shown in-process (the daemon is the real command): fewer
    # interpreter starts keep this module within its CI budget.
    settings = load_settings(config)
    ledger = operations.open_ledger(settings)

    def submit(image_id: str, dest: str) -> str:
        return operations.submit(settings, ledger, image_id, "site-a", dest).id

    def show(migration_id: str) -> dict[str, Any]:
        return reports.describe(ledger, ledger.find(migration_id))

    to_glance = submit(source_id, "site-b-shared")
    to_aws = submit(source_id, "aws-boot")
    started = time.monotonic()
    migratio_cli.run_until_idle(config)
    print(f"two migrations in {time.monotonic() - started:.1f} s")
    glance_shown = show(to_glance)
    copy = glance_peer.get(site_b, str(glance_shown["dest_image_id"])) or {}
    try:
        (register,) = front.ec2_calls("RegisterImage")
        yield Migrated(
            source=glance_peer.get(site_a, source_id) or {},
            source_members=_members(site_a, source_id),
            glance=copy,
            glance_members=_members(site_b, copy["id"]) if copy else [],
            glance_shown=glance_shown,
            register=register,
            aws_shown=show(to_aws),
        )
    finally:
        front.stop()
        _unprotect_and_delete(site_a, source_id)
        if copy:
            _unprotect_and_delete(site_b, copy["id"])


def test_the_glance_copy_carries_tags_properties_and_the_sites_sharing(
    migrated: Migrated,
) -> None:
    shown, source, copy = migrated.glance_shown, migrated.source, migrated.glance
    assert shown["state"] == "done", shown["error"]
    assert source["visibility"] == "shared" and migrated.source_members == [SOURCE_MEMBER]
    assert copy["status"] == "active" and copy["disk_format"] == "raw"
    kept = {k: v for k, v in PROPERTIES.items() if k not in SIGNATURE}
    assert {key: copy.get(key) for key in kept} == kept
    assert {key: copy.get(key) for key in FIELDS} == FIELDS
    assert sorted(copy["tags"]) == sorted(source["tags"]) == sorted(TAGS)
    assert copy["protected"] is True  # the site's policy: the source's flag
    # The site file's members, not the source's (a project of another cloud).
    assert copy["visibility"] == "shared"
    assert migrated.glance_members == sorted(DEST_MEMBERS)
    # Converted qcow2 -> raw: the signature over the source's bytes is dropped, noted.
    assert not set(SIGNATURE) & set(copy)
    registered = shown["history"][-1]["message"]
    assert "dropped img_signature, img_signature_certificate_uuid" in registered
    assert "converted to raw" in registered


def test_register_image_on_the_wire_says_uefi_tpm_arm64(migrated: Migrated) -> None:
    shown, wire = migrated.aws_shown, migrated.register
    assert shown["state"] == "done", shown["error"]
    (snapshot_id,) = [a["ref"] for a in shown["artifacts"] if a["ref"].startswith("snap-")]
    expected = {
        "Action": "RegisterImage",
        "Architecture": "arm64",
        "BootMode": "uefi",
        "TpmSupport": "v2.0",
        "ImdsSupport": "v2.0",
        "EnaSupport": "true",
        "SriovNetSupport": "simple",
        "VirtualizationType": "hvm",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.Ebs.SnapshotId": snapshot_id,
        "BlockDeviceMapping.1.Ebs.VolumeType": "gp3",
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
    }
    assert {key: wire.get(key) for key in expected} == expected
    assert wire["Name"] == f"ubuntu-24.04-uefi-arm64-{migrated.source['id']}"


def test_the_comparison_table(migrated: Migrated) -> None:
    """Prints (and with MIGRATIO_FIDELITY_OUT, writes) source vs. destinations."""
    table = comparison(migrated)
    print("\n" + table)
    if output := os.environ.get("MIGRATIO_FIDELITY_OUT"):
        Path(output).write_text(table + "\n", encoding="utf-8")
    assert table.count("\n") > len(PROPERTIES)


# RegisterImage's fields that carry each source field (on the wire, EC2 Query names).
WIRE = {
    "architecture": ["Architecture"],
    "hw_firmware_type": ["BootMode"],
    "hw_tpm_version": ["TpmSupport"],
    "hw_vif_model": ["EnaSupport", "SriovNetSupport"],
    "os_type": ["EnaSupport", "SriovNetSupport"],
    "name": ["Name"],
}
SITE_ONLY = [
    "ImdsSupport",
    "VirtualizationType",
    "RootDeviceName",
    "BlockDeviceMapping.1.DeviceName",
    "BlockDeviceMapping.1.Ebs.VolumeType",
    "BlockDeviceMapping.1.Ebs.DeleteOnTermination",
    "BlockDeviceMapping.1.Ebs.SnapshotId",
]


def comparison(migrated: Migrated) -> str:
    source, copy, wire = migrated.source, migrated.glance, migrated.register
    rows = [
        "| source field (site-a Glance) | source value | site-b Glance copy "
        "| RegisterImage on the wire |",
        "|---|---|---|---|",
    ]

    def cell(value: Any) -> str:
        return "—" if value in (None, "", []) else f"`{value}`"

    fields = [
        "name", "disk_format", "architecture", "min_disk", "min_ram", "tags",
        "protected", "visibility", *PROPERTIES,
    ]  # fmt: skip
    for key in fields:
        value = source.get(key)
        dest = copy.get(key)
        if key == "tags":
            value, dest = sorted(value or []), sorted(dest or [])
        on_wire = ", ".join(f"{name}=`{wire.get(name)}`" for name in WIRE.get(key, []))
        rows.append(f"| {key} | {cell(value)} | {cell(dest)} | {on_wire or '—'} |")
    rows.append(
        f"| members | {cell(migrated.source_members)} | {cell(migrated.glance_members)} | — |"
    )
    for name in SITE_ONLY:
        rows.append(f"| (site setting) | — | — | {name}=`{wire.get(name)}` |")
    audit = migrated.glance_shown["history"][-1]["message"]
    rows += ["", f"site-b's audit row (registering → done): {audit}"]
    return "\n".join(rows)
