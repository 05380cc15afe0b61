"""Daemon and site configuration: YAML files validated by pydantic.

Secrets never live here: an OpenStack site names a clouds.yaml entry (found the
OpenStack way, e.g. through ``OS_CLIENT_CONFIG_FILE``), nothing more.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from migratio.errors import ConfigError

CONFIG_ENV = "MIGRATIO_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/migratio/migratio.yml"
M = TypeVar("M", bound=BaseModel)
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """How transient errors are retried: exponential backoff with full jitter."""

    max_attempts: int = Field(default=6, ge=1)
    base_delay: float = Field(default=2.0, gt=0)
    max_delay: float = Field(default=300.0, gt=0)


class OpenStackSite(_Strict):
    """A site reached through its Image API (Glance v2)."""

    type: Literal["openstack"]
    cloud: str = Field(min_length=1)
    disk_format: Literal["keep", "raw", "qcow2"] = "keep"
    timeout: float = Field(default=60.0, gt=0)


SiteSettings = Annotated[OpenStackSite, Field(discriminator="type")]


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
    feedback: bool = True
    lease_seconds: float = Field(default=20.0, ge=2)
    poll_seconds: float = Field(default=1.0, gt=0)
    retry: RetryPolicy = RetryPolicy()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("name")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not SITE_ID.match(value):
            raise ValueError("must be a site id (letters, digits, '.', '_', '-')")
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

    def site(self, site_id: str) -> Site:
        try:
            return self.sites[site_id]
        except KeyError:
            known = ", ".join(sorted(self.sites)) or "none"
            raise ConfigError(
                str(self.daemon.sites_dir), site_id, f"unknown site (known: {known})"
            ) from None


def config_path(explicit: str | None) -> Path:
    """``--config`` wins, then ``$MIGRATIO_CONFIG``, then the system default."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


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
        wrapped = _validate(_SiteFile, {"site": _read_yaml(file)}, file)
        sites[site_id] = Site(id=site_id, settings=wrapped.site)
    return sites


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
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
        key = re.sub(r"^openstack\.?", "", key) or "type"
        raise ConfigError(str(path), key, first["msg"]) from None


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()
