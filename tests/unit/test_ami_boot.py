"""RegisterImage's arguments from an image's properties and its site's settings
(``ami_boot``), and the settings themselves; on the wire in
tests/e2e/test_image_fidelity.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from migratio.config import AwsSite, OpenStackSite
from migratio.drivers.aws.ami_boot import check, register_arguments
from migratio.errors import PermanentError


def _site(**settings: Any) -> AwsSite:
    return AwsSite.model_validate({"type": "aws", "region": "eu-west-1", **settings})


def _args(architecture: str | None = None, site: AwsSite | None = None, **properties: str) -> Any:
    return register_arguments(architecture, properties, site or _site(), "snap-1")


def test_an_unmarked_x86_image_gets_the_site_defaults() -> None:
    assert _args() == {
        "Architecture": "x86_64",
        "BootMode": "legacy-bios",
        "VirtualizationType": "hvm",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"SnapshotId": "snap-1", "DeleteOnTermination": True, "VolumeType": "gp3"},
            }
        ],
        "EnaSupport": True,
    }


@pytest.mark.parametrize(
    ("architecture", "firmware", "default", "mode"),
    [
        ("x86_64", "uefi", "legacy-bios", "uefi"),
        ("x86_64", "bios", "uefi", "legacy-bios"),
        ("x86_64", None, "uefi-preferred", "uefi-preferred"),
        ("x86_64", None, "uefi", "uefi"),
        ("aarch64", None, "legacy-bios", "uefi"),
        ("aarch64", "uefi", "uefi-preferred", "uefi"),
    ],
)
def test_boot_mode_is_the_images_else_the_sites(
    architecture: str, firmware: str | None, default: str, mode: str
) -> None:
    properties = {"hw_firmware_type": firmware} if firmware else {}
    args = _args(architecture, _site(default_boot_mode=default), **properties)
    assert args["BootMode"] == mode


def test_uefi_tpm_arm64_and_every_site_setting() -> None:
    site = _site(
        imds_support="v2.0",
        ena_support=False,
        sriov_net_support=True,
        root_device_name="/dev/sda1",
        volume_type="gp2",
        delete_on_termination=False,
    )
    args = _args("aarch64", site, hw_firmware_type="uefi", hw_tpm_version="2.0")
    assert {key: args[key] for key in ("Architecture", "BootMode", "TpmSupport")} == {
        "Architecture": "arm64",
        "BootMode": "uefi",
        "TpmSupport": "v2.0",
    }
    assert (args["ImdsSupport"], args["EnaSupport"], args["SriovNetSupport"]) == (
        "v2.0",
        False,
        "simple",
    )
    assert args["RootDeviceName"] == "/dev/sda1"
    assert args["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/sda1",
            "Ebs": {"SnapshotId": "snap-1", "DeleteOnTermination": False, "VolumeType": "gp2"},
        }
    ]


@pytest.mark.parametrize(
    ("properties", "ena"),
    [
        ({}, True),
        ({"os_type": "linux", "hw_vif_model": "virtio"}, True),
        ({"os_type": "windows"}, False),
        ({"hw_vif_model": "e1000"}, False),
    ],
)
def test_auto_network_support_reads_the_guest(properties: dict[str, str], ena: bool) -> None:
    args = _args(None, _site(sriov_net_support="auto"), **properties)
    assert args["EnaSupport"] is ena
    assert ("SriovNetSupport" in args) is ena


@pytest.mark.parametrize(
    ("architecture", "properties", "reason"),
    [
        ("ppc64le", {}, "architecture 'ppc64le'"),
        ("i686", {}, "architecture 'i686'"),
        ("aarch64", {"hw_firmware_type": "bios"}, "arm64 AMI boots UEFI only"),
        (None, {"hw_firmware_type": "coreboot"}, "neither uefi nor bios"),
        (None, {"hw_tpm_version": "1.2"}, "TPM 2.0"),
        (None, {"hw_tpm_version": "2.0"}, "needs UEFI boot"),
    ],
)
def test_what_aws_cannot_boot_is_refused(
    architecture: str | None, properties: dict[str, str], reason: str
) -> None:
    with pytest.raises(PermanentError, match=reason):
        check(architecture, properties, _site())


def test_site_settings_are_checked() -> None:
    with pytest.raises(ValidationError):
        _site(default_boot_mode="bios")
    with pytest.raises(ValidationError):
        _site(root_device_name="xvda")
    with pytest.raises(ValidationError):
        _site(volume_type="st1")
    glance = {"type": "openstack", "cloud": "b"}
    with pytest.raises(ValidationError, match="only for visibility: shared"):
        OpenStackSite.model_validate({**glance, "members": ["p1"]})
    with pytest.raises(ValidationError, match="not a project id"):
        OpenStackSite.model_validate({**glance, "visibility": "shared", "members": ["a b"]})
    site = OpenStackSite.model_validate({**glance, "visibility": "shared", "members": ["p1", "p1"]})
    assert site.members == ("p1",)
    assert (site.copy_protected(True), site.copy_protected(False)) == (True, False)
    never = OpenStackSite.model_validate({**glance, "protected": False})
    assert never.copy_protected(True) is False
