"""Daemon and site configuration: YAML files validated by pydantic.

Secrets never live here: an OpenStack site names a clouds.yaml entry (found the
OpenStack way, e.g. through ``OS_CLIENT_CONFIG_FILE``), nothing more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
)

from migratio.cap_schedule import Cap
from migratio.config_files import (
    DEFAULT_SITES_DIR,
    DEFAULT_WORK_DIR,
    default_ledger_url,
    read_yaml,
    resolve,
    site_files,
)
from migratio.config_path import CONFIG_ENV, DEFAULT_CONFIG_PATH, config_path
from migratio.errors import ConfigError
from migratio.ledger.urls import supported_url
from migratio.site_settings import (
    AwsSite,
    OpenStackSite,
    OpenStackSshSite,
    SiteSettings,
    Strict,
)

# Re-exported: callers know them as config.<name>.
__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AwsSite",
    "OpenStackSite",
    "OpenStackSshSite",
    "SiteSettings",
    "config_path",
    "site_files",
]
M = TypeVar("M", bound=BaseModel)
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RetryPolicy(Strict):
    """How transient errors are retried: exponential backoff with full jitter."""

    max_attempts: int = Field(default=6, ge=1)
    base_delay: float = Field(default=2.0, gt=0)
    max_delay: float = Field(default=300.0, gt=0)


# Keys that would put secrets into migratio's own files: refused with a pointer
# to where credentials belong.
SECRET_KEYS = frozenset(
    {"password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "secret"}
)


class Site(Strict):
    """A site as the daemon knows it: its id (the file name) and its settings."""

    id: str
    settings: SiteSettings


class _SiteFile(Strict):
    site: SiteSettings


LISTEN = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$"
)


def listen_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6 address]:port``) as a host and a port, or ValueError."""
    match = LISTEN.match(value)
    if match is None:
        raise ValueError("must be host:port, like 127.0.0.1:9464 or [::1]:9464")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    return match["ipv6"] or match["host"], port


class DaemonConfig(Strict):
    """The daemon's own configuration (``migratio.yml``)."""

    name: str
    work_dir: Path
    database_url: str = ""
    concurrency: int = Field(default=2, ge=1, le=64)
    sites_dir: Path = Path(DEFAULT_SITES_DIR)
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "atmosphere"
    # Take Sidekiq jobs from <namespace>:queue:migration_<name> into the ledger.
    intake: bool = True
    # Jobs moved and recorded per round (one ledger transaction, one Redis round trip).
    intake_batch: int = Field(default=50, ge=1, le=1000)
    # Fan-out: a job for an image that a migration created this recently (and not
    # yet reading alone) moves from the same source to another destination joins
    # its group, and the source is read once for both (0: off).
    coalesce_seconds: float = Field(default=3.0, ge=0)
    # A consumer silent this long is dead: its unrecorded jobs go back to the queue.
    intake_heartbeat_seconds: float = Field(default=15.0, ge=1)
    # Dead letters kept in <namespace>:migratio:dead; the oldest go first.
    dead_letters_max: int = Field(default=10_000, ge=1)
    # Push a status job to <namespace>:queue:feedback on every transition.
    feedback: bool = True
    # Drive migrations; false runs only intake and feedback (a front end for
    # daemons sharing a PostgreSQL ledger).
    migrate: bool = True
    # Serve Prometheus metrics on http://host:port/metrics; off when unset.
    metrics_listen: str | None = None
    lease_seconds: float = Field(default=20.0, ge=2)
    poll_seconds: float = Field(default=1.0, gt=0)
    # How often a running transfer records its progress (and checks for a cancel).
    progress_seconds: float = Field(default=1.0, gt=0)
    # A transfer that moves no byte for this long is aborted (its connections
    # cut) and retried as a transient error ("stalled: no progress for N s").
    stall_seconds: float = Field(default=120.0, gt=0)
    # A migration whose staged or converted files do not fit in the work dir
    # now waits (one audit note) and looks again this often.
    space_wait_seconds: float = Field(default=10.0, gt=0)
    # Redis: seconds to connect, and to wait for any answer (on top of the
    # wait a blocking command asks for).
    redis_connect_timeout: float = Field(default=5.0, gt=0)
    redis_timeout: float = Field(default=10.0, gt=0)
    retry: RetryPolicy = RetryPolicy()
    # MiB/s this daemon moves in all, every migration together (reads and
    # writes); a number or a weekly schedule, like a site's. Unset: no cap.
    max_mib_per_s: Cap = None
    # migratio's own loggers.
    log_level: LogLevel = "INFO"
    # Every other logger (openstacksdk, keystoneauth, botocore, urllib3, paramiko,
    # transitions...): their DEBUG prints every request, so they stay quiet unless asked.
    log_level_libraries: LogLevel = "WARNING"
    # text: one line per record; json: one JSON object per line (time, level,
    # logger, thread, message, and the migration, state and sites it is about).
    log_format: Literal["text", "json"] = "text"

    @field_validator("name")
    @classmethod
    def _site_id(cls, value: str) -> str:
        if not SITE_ID.match(value):
            raise ValueError("must be a site id (letters, digits, '.', '_', '-')")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        return supported_url(value) if value else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @property
    def ledger_url(self) -> str:
        """The configured database URL, or the embedded SQLite ledger in the work dir."""
        return self.database_url or default_ledger_url(self.work_dir)


class Settings:
    """Everything the daemon and the CLI read from disk, loaded once."""

    def __init__(self, path: Path, daemon: DaemonConfig, sites: dict[str, Site]) -> None:
        self.path = path
        self.daemon = daemon
        self.sites = sites

    @property
    def slots(self) -> dict[str, int]:
        """``max_concurrent`` of every site that has one: the ledger's claim keeps to it."""
        return {
            site.id: site.settings.max_concurrent
            for site in self.sites.values()
            if site.settings.max_concurrent is not None
        }

    def cap(self, site_id: str | None) -> Cap:
        """``max_mib_per_s`` of a site (none for a site no longer configured), or
        with None, the daemon's."""
        if site_id is None:
            return self.daemon.max_mib_per_s
        site = self.sites.get(site_id)
        return site.settings.max_mib_per_s if site is not None else None

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


# What a reload (SIGHUP) cannot change in a running daemon: its identity, its
# ledger and Redis connections, its thread pool and the leases it holds.
RESTART_ONLY = (
    "name",
    "work_dir",
    "database_url",
    "concurrency",
    "redis_url",
    "namespace",
    "intake",
    "intake_batch",
    "intake_heartbeat_seconds",
    "dead_letters_max",
    "feedback",
    "migrate",
    "lease_seconds",
)


def reload_settings(current: Settings) -> tuple[Settings, list[str]]:
    """The config and site files read again, or ConfigError (``current`` stays).

    Fields in ``RESTART_ONLY`` keep their running values; their names come back
    when the files changed them, so the operator can be told to restart.
    """
    fresh = load_settings(current.path)
    pending = [
        key for key in RESTART_ONLY if getattr(fresh.daemon, key) != getattr(current.daemon, key)
    ]
    kept = {key: getattr(current.daemon, key) for key in RESTART_ONLY}
    return Settings(current.path, fresh.daemon.model_copy(update=kept), fresh.sites), pending


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
    daemon = load_daemon_config(path)
    return Settings(path, daemon, load_sites(daemon.sites_dir))


def load_daemon_config(path: Path) -> DaemonConfig:
    """The daemon config alone, its paths resolved against its directory, or ConfigError."""
    raw = read_yaml(path)
    raw.setdefault("work_dir", DEFAULT_WORK_DIR)
    daemon = _validate(DaemonConfig, raw, path)
    base = path.parent
    daemon = daemon.model_copy(
        update={
            "work_dir": resolve(base, daemon.work_dir),
            "sites_dir": resolve(base, daemon.sites_dir),
        }
    )
    if daemon.work_dir.exists() and not daemon.work_dir.is_dir():
        raise ConfigError(str(path), "work_dir", f"{daemon.work_dir} is not a directory")
    return daemon


def load_sites(sites_dir: Path) -> dict[str, Site]:
    """Every ``*.yml``/``*.yaml`` in the sites dir is one site, named by its file."""
    return {site.id: site for site in map(load_site, site_files(sites_dir))}


def load_site(file: Path) -> Site:
    """One site file, the site named by the file, or ConfigError naming file and key."""
    site_id = file.name.rsplit(".", 1)[0]
    if not SITE_ID.match(site_id):
        raise ConfigError(str(file), "(file name)", "is not a valid site id")
    raw = read_yaml(file)
    if secret := sorted(SECRET_KEYS & set(raw)):
        raise ConfigError(
            str(file),
            secret[0],
            "secrets do not belong in site files; use clouds.yaml "
            "or an AWS profile / the default credential chain",
        )
    settings = _validate(_SiteFile, {"site": raw}, file).site
    return Site(id=site_id, settings=_resolve_paths(settings, file.parent))


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
                "key_file": resolve(base, settings.key_file),
                "known_hosts": resolve(base, settings.known_hosts),
            }
        )
    return settings
