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


class OpenStackSite(_DiskFormatChoice, _SiteTimeouts):
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


class AwsSite(_SiteTimeouts):
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
    # Attempts botocore makes at one request (1: its retries off). AWS asks
    # clients of the EBS direct APIs to retry throttled blocks; longer trouble
    # is the retry policy's.
    request_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not AWS_REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name (like eu-west-1)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _bucket_for_import(self) -> AwsSite:
        if self.method == "import-snapshot" and not self.bucket:
            raise ValueError("import-snapshot needs an S3 'bucket'")
        return self


SiteSettings = Annotated[OpenStackSite | OpenStackSshSite | AwsSite, Field(discriminator="type")]
