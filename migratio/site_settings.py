"""The settings of each kind of site (one YAML file per site in ``sites_dir``),
validated by pydantic. Secrets never live here: an OpenStack site names a
clouds.yaml entry; an AWS site uses boto3's chain or a named profile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from migratio.cap_schedule import Cap


class Strict(BaseModel):
    """Unknown keys are refused (a typo must not pass silently); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _DiskFormatChoice(Strict):
    """A destination that may require a disk format (``keep``: the source's)."""

    disk_format: Literal["keep", "raw", "qcow2"] = "keep"

    @property
    def required_disk_format(self) -> str | None:
        return None if self.disk_format == "keep" else self.disk_format


class _SiteLimits(Strict):
    """How much of a site migratio may use (see docs/operations.md, "Caps").

    max_mib_per_s: MiB/s read from and written to this site by all the
        migrations of a daemon together; a number or a weekly schedule
        (``cap_schedule``); unset: no cap.
    max_concurrent: migrations to this site running at once, across every
        daemon of the ledger; the others wait in ``queued``. Unset: no limit.
    """

    max_mib_per_s: Cap = None
    max_concurrent: int | None = Field(default=None, ge=1, le=1000)


class _SiteTimeouts(_SiteLimits):
    """Socket timeouts of every call to a site.

    connect_timeout: seconds to open a connection (TCP, and TLS or SSH's
        banner where there is one).
    read_timeout: seconds any one read or write on an open connection may wait;
        not a whole transfer (a transfer that stops moving is ``stall_seconds``'s).
    timeout: the default of both; also what a whole call or remote command may
        take where the site type says so.
    """

    timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=60.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_to_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout" in data:
            timeout = data["timeout"]
            data = {"connect_timeout": timeout, "read_timeout": timeout, **data}
        return data


GLANCE_MEMBER = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class _GlancePolicy(Strict):
    """What a copy becomes at this Glance site, whatever the source's record says.

    visibility: ``private`` (default: only migratio's project sees it),
        ``shared`` (with ``members``), ``community`` or ``public``. The source's
        own visibility and members are not copied: its members are projects of
        another cloud. A visibility the site's policy does not allow migratio's
        user (``public`` needs admin by Glance's default policy) is refused by
        the site, and the migration fails with the site's reason.
    members: project ids of this site the copy is shared with (``shared`` only).
    protected: ``source`` (default) copies the source's flag; ``true`` or
        ``false`` sets it for every copy.
    """

    visibility: Literal["private", "shared", "community", "public"] = "private"
    members: tuple[str, ...] = ()
    protected: bool | Literal["source"] = "source"

    @field_validator("members")
    @classmethod
    def _members(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for member in value:
            if not GLANCE_MEMBER.match(member):
                raise ValueError(f"{member!r} is not a project id")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _members_need_shared(self) -> _GlancePolicy:
        if self.members and self.visibility != "shared":
            raise ValueError("members are only for visibility: shared")
        return self

    def copy_protected(self, source_protected: bool) -> bool:
        """The protected flag a copy gets."""
        return source_protected if self.protected == "source" else bool(self.protected)


class OpenStackSite(_GlancePolicy, _DiskFormatChoice, _SiteTimeouts):
    """A site reached through its Image API (Glance v2): a source and a destination."""

    can_be_source: ClassVar[bool] = True
    type: Literal["openstack"]
    cloud: str = Field(min_length=1)


class OpenStackSshSite(_DiskFormatChoice, _SiteTimeouts):
    """An OpenStack site reached by SSH to an external host that runs the ``openstack`` CLI.

    Host keys are always verified against ``known_hosts``; an unknown key is
    accepted (and recorded) only when the operator sets ``accept_unknown_host_key``.
    A destination only.
    """

    can_be_source: ClassVar[bool] = False
    type: Literal["openstack-ssh"]
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key_file: Path
    known_hosts: Path
    accept_unknown_host_key: bool = False
    cloud: str = Field(min_length=1)
    staging_dir: str = "migratio-staging"  # on the external host, relative to its home
    openstack_command: str = "openstack"


AWS_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/\S+$")
# Launch permissions: an account id, an organisation or an organisational unit.
SHARE_PRINCIPAL = re.compile(
    r"^(\d{12}"
    r"|arn:aws[a-z-]*:organizations::\d{12}:organization/o-[a-z0-9]{10,32}"
    r"|arn:aws[a-z-]*:organizations::\d{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}"
    r")$"
)


class _AmiRegistration(Strict):
    """How an AMI is registered where the image itself does not say
    (``migratio/drivers/aws/ami_boot.py`` reads the image's properties).

    default_boot_mode: for an image without ``hw_firmware_type``: ``legacy-bios``
        (default: what an unmarked x86 image most likely needs), ``uefi`` or
        ``uefi-preferred``. An arm64 image always boots UEFI.
    imds_support: ``v2.0`` makes instances launched from the AMI require IMDSv2;
        unset: the account's default.
    ena_support, sriov_net_support: true, false, or ``auto`` (decided by the
        image's ``os_type`` and ``hw_vif_model``: see docs/image-fidelity.md).
    root_device_name, volume_type, delete_on_termination: the root volume's
        block-device mapping.
    """

    default_boot_mode: Literal["legacy-bios", "uefi", "uefi-preferred"] = "legacy-bios"
    imds_support: Literal["v2.0"] | None = None
    ena_support: bool | Literal["auto"] = "auto"
    sriov_net_support: bool | Literal["auto"] = False
    root_device_name: str = Field(default="/dev/xvda", pattern=r"^/dev/[a-z0-9]{2,16}$")
    volume_type: Literal["gp3", "gp2", "standard"] = "gp3"
    delete_on_termination: bool = True


class AwsSite(_AmiRegistration, _SiteTimeouts):
    """An AWS region; an image becomes an AMI. Credentials come from boto3's
    default chain or a named ``profile``, never from this file. A destination only."""

    can_be_source: ClassVar[bool] = False
    type: Literal["aws"]
    region: str
    profile: str | None = None
    endpoint_url: str | None = None
    method: Literal["ebs-direct", "import-snapshot"] = "ebs-direct"
    bucket: str | None = None
    workers: int = Field(default=16, ge=1, le=128)
    # ebs-direct: send a qcow2's blocks while it downloads (migratio.following);
    # false stages the whole image first, then sends (the path before; a baseline).
    follow_download: bool = True
    # Attempts botocore makes at one request (1: its retries off). AWS asks
    # clients of the EBS direct APIs to retry throttled blocks; longer trouble
    # is the retry policy's.
    request_attempts: int = Field(default=3, ge=1, le=10)
    # Snapshots started encrypted: with this KMS key (id, ARN or alias), or with
    # the account's default EBS key when only ``encrypted`` is set.
    encrypted: bool = False
    kms_key_id: str | None = Field(default=None, min_length=1)
    # Who may launch the AMI (and its copies): account ids, organisation ARNs,
    # organisational unit ARNs. Accounts also get the snapshots' create-volume permission.
    share_with: tuple[str, ...] = ()
    # Other regions the AMI is copied to; the migration is done once every copy is available.
    copy_to_regions: tuple[str, ...] = ()
    # The KMS key each copy is encrypted with (a key lives in one region); a copy
    # region not named here uses that region's default EBS key.
    copy_kms_key_ids: dict[str, str] = Field(default_factory=dict)

    @property
    def encrypts(self) -> bool:
        return self.encrypted or self.kms_key_id is not None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not AWS_REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name (like eu-west-1)")
        return value

    @field_validator("share_with")
    @classmethod
    def _principals(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for principal in value:
            if not SHARE_PRINCIPAL.match(principal):
                raise ValueError(
                    f"{principal!r} is neither a 12-digit account id nor an organisation "
                    "or organisational unit ARN"
                )
        return tuple(dict.fromkeys(value))

    @field_validator("copy_to_regions")
    @classmethod
    def _copy_regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for region in value:
            cls._region(region)
        return tuple(dict.fromkeys(value))

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AwsSite:
        if self.method == "import-snapshot" and not self.bucket:
            raise ValueError("import-snapshot needs an S3 'bucket'")
        if (
            self.method == "ebs-direct"
            and self.kms_key_id
            and not KMS_KEY_ARN.match(self.kms_key_id)
        ):
            # StartSnapshot takes only a key ARN (ImportSnapshot also ids and aliases).
            raise ValueError("kms_key_id: ebs-direct needs a KMS key ARN (arn:aws:kms:…:key/…)")
        if self.share_with and self.encrypts and not self.kms_key_id:
            # AWS refuses to share what its managed EBS key encrypted.
            raise ValueError("share_with on an encrypted site needs a customer managed kms_key_id")
        if unknown := set(self.copy_kms_key_ids) - set(self.copy_to_regions):
            raise ValueError(
                f"copy_kms_key_ids names regions not in copy_to_regions: {sorted(unknown)}"
            )
        unkeyed = [r for r in self.copy_to_regions if r not in self.copy_kms_key_ids]
        if self.share_with and self.encrypts and unkeyed:
            raise ValueError(f"share_with on an encrypted site needs copy_kms_key_ids: {unkeyed}")
        if self.region in self.copy_to_regions:
            raise ValueError(f"copy_to_regions names the site's own region {self.region!r}")
        return self


SiteSettings = Annotated[OpenStackSite | OpenStackSshSite | AwsSite, Field(discriminator="type")]
