"""One real Glance API (Debian's package) per site, authenticating against the bed's Keystone."""

from dataclasses import dataclass
from pathlib import Path

from . import files, http, processes, schema_cache
from .errors import TestbedError
from .keystone import GLANCE_USER, SERVICE_PROJECT
from .processes import Server


@dataclass(frozen=True)
class GlanceLayout:
    """Where one site's Glance keeps its state and logs, and where it listens."""

    site: str
    state_dir: Path
    log_dir: Path
    port: int

    @property
    def name(self) -> str:
        return f"glance-{self.site}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.state_dir / "glance-api.conf"

    @property
    def paste_config(self) -> Path:
        return self.state_dir / "glance-api-paste.ini"

    @property
    def database(self) -> Path:
        return self.state_dir / "glance.sqlite"

    @property
    def setup_log(self) -> Path:
        return self.log_dir / f"{self.name}-setup.log"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"


def configure(layout: GlanceLayout, keystone_url: str, glance_password: str) -> None:
    """Write glance-api.conf and its paste pipeline (Keystone auth, /healthcheck open)."""
    state = layout.state_dir
    for sub in ("images", "staging", "tasks", "locks", "cache"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    files.write_ini(
        layout.config,
        {
            "DEFAULT": {
                "bind_host": "127.0.0.1",
                "bind_port": layout.port,
                # One process: no fork per worker, ~145 MiB per site, and a
                # single writer for SQLite.
                "workers": 0,
                "enabled_backends": "fs:file",
                # Otherwise under /var/lib/glance, shared with the machine's Glance.
                "image_cache_dir": state / "cache",
                # Glance's default; os_hash_value is what migratio verifies.
                "hashing_algorithm": "sha512",
                "debug": "false",
            },
            "database": {"connection": f"sqlite:///{layout.database}"},
            "glance_store": {"default_backend": "fs"},
            "fs": {"filesystem_store_datadir": f"{state / 'images'}/"},
            "os_glance_staging_store": {"filesystem_store_datadir": f"{state / 'staging'}/"},
            "os_glance_tasks_store": {"filesystem_store_datadir": f"{state / 'tasks'}/"},
            "oslo_concurrency": {"lock_path": state / "locks"},
            "paste_deploy": {"config_file": layout.paste_config, "flavor": "keystone"},
            "keystone_authtoken": {
                "www_authenticate_uri": keystone_url,
                "auth_url": keystone_url,
                "auth_type": "password",
                "username": GLANCE_USER,
                "password": glance_password,
                "project_name": SERVICE_PROJECT,
                "user_domain_id": "default",
                "project_domain_id": "default",
                "region_name": layout.site,
                "interface": "public",
            },
        },
    )
    files.write_ini(
        layout.paste_config,
        {
            # The health check is an app beside the authenticated pipeline, so
            # readiness can be probed without a token.
            "composite:glance-api-keystone": {
                "paste.composite_factory": "glance.api:root_app_factory",
                "/": "authenticated",
                "/healthcheck": "healthcheck",
            },
            "pipeline:authenticated": {
                "pipeline": "versionnegotiation authtoken context rootapp",
            },
            "composite:rootapp": {
                "paste.composite_factory": "glance.api:root_app_factory",
                "/": "apiversions",
                "/v2": "apiv2app",
            },
            "app:apiversions": {"paste.app_factory": "glance.api.versions:create_resource"},
            "app:apiv2app": {"paste.app_factory": "glance.api.v2.router:API.factory"},
            "app:healthcheck": {
                "paste.app_factory": "oslo_middleware:Healthcheck.app_factory",
                "backends": "disable_by_file",
                "disable_by_file_path": state / "healthcheck_disable",
            },
            "filter:versionnegotiation": {
                "paste.filter_factory": (
                    "glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory"
                ),
            },
            "filter:authtoken": {
                "paste.filter_factory": "keystonemiddleware.auth_token:filter_factory",
                "delay_auth_decision": "true",
            },
            "filter:context": {
                "paste.filter_factory": "glance.api.middleware.context:ContextMiddleware.factory",
            },
        },
    )


def setup(layout: GlanceLayout) -> None:
    """Create the site's database."""
    argv = ["glance-manage", "--config-file", str(layout.config), "db_sync"]
    schema_cache.migrated_database(
        "python3-glance",
        layout.database,
        lambda: processes.run(
            argv, layout.setup_log, what="glance-manage db_sync", cwd=layout.state_dir
        ),
    )


def start(layout: GlanceLayout, mark: str) -> Server:
    """Start ``glance-api`` for the site (it needs Keystone only once requests arrive)."""
    argv = ["glance-api", "--config-file", str(layout.config)]
    return processes.spawn(layout.name, argv, layout.log, mark=mark, cwd=layout.state_dir)


def check_token(layout: GlanceLayout, token: str) -> None:
    """Prove the site accepts a Keystone token: /healthcheck alone does not touch auth."""
    try:
        http.call(f"{layout.url}/v2/images?limit=1", headers={"X-Auth-Token": token})
    except OSError as exc:
        raise TestbedError(
            f"{layout.name} rejects Keystone tokens ({exc}); read {layout.log}"
        ) from None
