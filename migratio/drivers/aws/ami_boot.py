"""How an AMI boots: RegisterImage's arguments from the image's properties and
the site's settings, as a pure function (no call to AWS).

The image says what it needs in Glance's words (``architecture``,
``hw_firmware_type``, ``hw_tpm_version``, ``os_type``, ``hw_vif_model``); the site
says what the image does not (``default_boot_mode``, ``imds_support``, ``ena_support``,
``sriov_net_support``, the root volume). What AWS cannot boot is refused here,
before any byte is uploaded: ``check`` runs when the record is created. The
table of every property is docs/image-fidelity.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migratio.config import AwsSite
from migratio.errors import PermanentError

# Glance's (Nova's) architecture names -> EC2's; amd64 and arm64 are other
# spellings of the same two that Nova canonicalizes. AWS has no others today
# (i386 only on instance types long retired).
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
DEFAULT_ARCHITECTURE = "x86_64"
FIRMWARE = {"uefi": "uefi", "bios": "legacy-bios"}
# NIC models Nova emulates: an image pinned to one says its guest may lack
# paravirtual network drivers (ENA, the 82599 VF), so ``auto`` does not claim them.
EMULATED_NICS = frozenset({"e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet", "lan9118"})


def register_arguments(
    architecture: str | None, properties: Mapping[str, str], settings: AwsSite, snapshot_id: str
) -> dict[str, Any]:
    """RegisterImage's keyword arguments but Name, Description and tags;
    PermanentError for an image AWS cannot boot as it asks."""
    arch = ec2_architecture(architecture)
    boot_mode = _boot_mode(arch, properties, settings)
    arguments: dict[str, Any] = {
        "Architecture": arch,
        "BootMode": boot_mode,
        "VirtualizationType": "hvm",
        "RootDeviceName": settings.root_device_name,
        "BlockDeviceMappings": [
            {
                "DeviceName": settings.root_device_name,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "DeleteOnTermination": settings.delete_on_termination,
                    "VolumeType": settings.volume_type,
                },
            }
        ],
        "EnaSupport": _decided(settings.ena_support, properties),
    }
    if tpm := _tpm(properties, boot_mode):
        arguments["TpmSupport"] = tpm
    if settings.imds_support:
        arguments["ImdsSupport"] = settings.imds_support
    if _decided(settings.sriov_net_support, properties):
        arguments["SriovNetSupport"] = "simple"
    return arguments


def check(architecture: str | None, properties: Mapping[str, str], settings: AwsSite) -> None:
    """PermanentError now for an image ``register_arguments`` would refuse later."""
    register_arguments(architecture, properties, settings, "snap-unknown")


def ec2_architecture(architecture: str | None) -> str:
    if architecture is None:
        return DEFAULT_ARCHITECTURE
    try:
        return ARCHITECTURES[architecture.lower()]
    except KeyError:
        raise PermanentError(
            f"AWS has no AMIs for architecture {architecture!r} (x86_64 or aarch64 only)"
        ) from None


def _boot_mode(arch: str, properties: Mapping[str, str], settings: AwsSite) -> str:
    firmware = properties.get("hw_firmware_type")
    if firmware is None:
        # Graviton boots UEFI only; the site's default is for images that may be either.
        return "uefi" if arch == "arm64" else settings.default_boot_mode
    try:
        mode = FIRMWARE[firmware.lower()]
    except KeyError:
        raise PermanentError(
            f"hw_firmware_type {firmware!r} is neither uefi nor bios: no AWS boot mode"
        ) from None
    if arch == "arm64" and mode != "uefi":
        raise PermanentError(
            "an arm64 AMI boots UEFI only, and the image says hw_firmware_type=bios"
        )
    return mode


def _tpm(properties: Mapping[str, str], boot_mode: str) -> str | None:
    version = properties.get("hw_tpm_version")
    if version is None:
        return None
    if version != "2.0":
        raise PermanentError(f"hw_tpm_version {version!r}: AWS offers TPM 2.0 (NitroTPM) only")
    if boot_mode == "legacy-bios":
        raise PermanentError(
            "hw_tpm_version=2.0 needs UEFI boot (NitroTPM), and the AMI would boot legacy-bios: "
            "set hw_firmware_type=uefi on the image or default_boot_mode on the site"
        )
    return "v2.0"


def _decided(setting: bool | str, properties: Mapping[str, str]) -> bool:
    """A site's true/false, or for ``auto``: a guest with paravirtual network drivers,
    i.e. not Windows (whose ENA and VF drivers are AWS's own installs) and not
    pinned to an emulated NIC."""
    if isinstance(setting, bool):
        return setting
    windows = properties.get("os_type", "").lower() == "windows"
    emulated = properties.get("hw_vif_model", "").lower() in EMULATED_NICS
    return not windows and not emulated
