"""Daemon and site configuration: YAML files validated by pydantic.

Secrets never live here: an OpenStack site names a clouds.yaml entry (found the
OpenStack way, e.g. through ``OS_CLIENT_CONFIG_FILE``), nothing more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from migratio.config_path import CONFIG_ENV, DEFAULT_CONFIG_PATH, config_path
from migratio.errors import ConfigError

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG_PATH", "config_path"]  # re-exported for callers
M = TypeVar("M", bound=BaseModel)
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """How transient errors are retried: exponential backoff with full jitter."""

    max_attempts: int = Field(default=6, ge=1)
    base_delay: float = Field(default=2.0, gt=0)
    max_delay: float = Field(default=300.0, gt=0)


class _DiskFormatChoice(_Strict):
    """A destination that may require a disk format (``keep``: the source's)."""

    disk_format: Literal["keep", "raw", "qcow2"] = "keep"

    @property
    def required_disk_format(self) -> str | None:
        return None if self.disk_format == "keep" else self.disk_format


class _SiteTimeouts(_Strict):
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

# Keys that would put secrets into migratio's own files: refused with a pointer
# to where credentials belong.
SECRET_KEYS = frozenset(
    {"password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "secret"}
)


class Site(_Strict):
    """A site as the daemon knows it: its id (the file name) and its settings."""

    id: str
    settings: SiteSettings


class _SiteFile(_Strict):
    site: SiteSettings


class DaemonConfig(_Strict):
    """The daemon's own configuration (``migratio.yml``)."""

    name: str
    work_dir: Path
    database_url: str = ""
    concurrency: int = Field(default=2, ge=1, le=64)
    sites_dir: Path = Path("sites")
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "atmosphere"
    # Take Sidekiq jobs from <namespace>:queue:migration_<name> into the ledger.
    intake: bool = True
    # Jobs moved and recorded per round (one ledger transaction, one Redis round trip).
    intake_batch: int = Field(default=50, ge=1, le=1000)
    # A consumer silent this long is dead: its unrecorded jobs go back to the queue.
    intake_heartbeat_seconds: float = Field(default=15.0, ge=1)
    # Dead letters kept in <namespace>:migratio:dead; the oldest go first.
    dead_letters_max: int = Field(default=10_000, ge=1)
    # Push a status job to <namespace>:queue:feedback on every transition.
    feedback: bool = True
    # Drive migrations; false runs only intake and feedback (a front end for
    # daemons sharing a PostgreSQL ledger).
    migrate: bool = True
    lease_seconds: float = Field(default=20.0, ge=2)
    poll_seconds: float = Field(default=1.0, gt=0)
    # How often a running transfer records its progress (and checks for a cancel).
    progress_seconds: float = Field(default=1.0, gt=0)
    # A transfer that moves no byte for this long is aborted (its connections
    # cut) and retried as a transient error ("stalled: no progress for N s").
    stall_seconds: float = Field(default=120.0, gt=0)
    # Redis: seconds to connect, and to wait for any answer (on top of the
    # wait a blocking command asks for).
    redis_connect_timeout: float = Field(default=5.0, gt=0)
    redis_timeout: float = Field(default=10.0, gt=0)
    retry: RetryPolicy = RetryPolicy()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("name")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not SITE_ID.match(value):
            raise ValueError("must be a site id (letters, digits, '.', '_', '-')")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        # Imported on use: only a config that names a database needs the database stack.
        from migratio.ledger.database import supported_url

        return supported_url(value) if value else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def ledger_url(self) -> str:
        """The configured database URL, or the embedded SQLite ledger in the work dir."""
        return self.database_url or f"sqlite:///{self.work_dir / 'ledger.sqlite'}"


class Settings:
    """Everything the daemon and the CLI read from disk, loaded once."""

    def __init__(self, path: Path, daemon: DaemonConfig, sites: dict[str, Site]) -> None:
        self.path = path
        self.daemon = daemon
        self.sites = sites

    @property
    def source_sites(self) -> set[str]:
        """The ids of the sites images can be read from."""
        return {site.id for site in self.sites.values() if site.settings.can_be_source}

    def site(self, site_id: str) -> Site:
        try:
            return self.sites[site_id]
        except KeyError:
            known = ", ".join(sorted(self.sites)) or "none"
            raise ConfigError(
                str(self.daemon.sites_dir), site_id, f"unknown site (known: {known})"
            ) from None


def check_source(site: Site) -> None:
    """ConfigError unless images can be read from the site."""
    if not site.settings.can_be_source:
        raise ConfigError(
            site.id,
            "type",
            f"{site.settings.type} sites are destinations only: images migrate to them, "
            "not from them",
        )


def load_settings(path: Path) -> Settings:
    """Load and validate the daemon config and every site file, or raise ConfigError."""
    raw = _read_yaml(path)
    raw.setdefault("work_dir", "/var/lib/migratio")
    daemon = _validate(DaemonConfig, raw, path)
    base = path.parent
    daemon = daemon.model_copy(
        update={
            "work_dir": _resolve(base, daemon.work_dir),
            "sites_dir": _resolve(base, daemon.sites_dir),
        }
    )
    if daemon.work_dir.exists() and not daemon.work_dir.is_dir():
        raise ConfigError(str(path), "work_dir", f"{daemon.work_dir} is not a directory")
    return Settings(path, daemon, load_sites(daemon.sites_dir))


def load_sites(sites_dir: Path) -> dict[str, Site]:
    """Every ``*.yml``/``*.yaml`` in the sites dir is one site, named by its file."""
    if not sites_dir.is_dir():
        raise ConfigError(str(sites_dir), "sites_dir", "is not a directory")
    sites: dict[str, Site] = {}
    for file in sorted([*sites_dir.glob("*.yml"), *sites_dir.glob("*.yaml")]):
        site_id = file.name.rsplit(".", 1)[0]
        if site_id.endswith(".example"):
            continue
        if not SITE_ID.match(site_id):
            raise ConfigError(str(file), "(file name)", "is not a valid site id")
        raw = _read_yaml(file)
        if secret := sorted(SECRET_KEYS & set(raw)):
            raise ConfigError(
                str(file),
                secret[0],
                "secrets do not belong in site files; use clouds.yaml "
                "or an AWS profile / the default credential chain",
            )
        settings = _validate(_SiteFile, {"site": raw}, file).site
        sites[site_id] = Site(id=site_id, settings=_resolve_paths(settings, file.parent))
    return sites


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), "", f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(syntax)"
        raise ConfigError(str(path), where, "is not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "must be a YAML mapping")
    return data


def _validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"] if part != "site")
        key = re.sub(r"^(openstack-ssh|openstack|aws)\.?", "", key) or "type"
        raise ConfigError(str(path), key, first["msg"]) from None


def _resolve_paths(settings: SiteSettings, base: Path) -> SiteSettings:
    """Relative paths in a site file are relative to that file."""
    if isinstance(settings, OpenStackSshSite):
        return settings.model_copy(
            update={
                "key_file": _resolve(base, settings.key_file),
                "known_hosts": _resolve(base, settings.known_hosts),
            }
        )
    return settings


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()
