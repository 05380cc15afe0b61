"""One real Keystone (Debian's package) under uwsgi: the bed's identity service.

Both Glance sites are regions of this Keystone, each with its own image endpoint,
the way one cloud with two regions looks to openstacksdk.
"""

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import files, http, processes, schema_cache
from .errors import TestbedError
from .processes import Server

if TYPE_CHECKING:
    from openstack.connection import Connection
    from openstack.identity.v3._proxy import Proxy as IdentityV3

ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"
SERVICE_PROJECT = "service"
GLANCE_USER = "glance"
WSGI_FILE = "/usr/bin/keystone-wsgi-public"


@dataclass(frozen=True)
class KeystoneLayout:
    """Where one Keystone keeps its state and log, and where it listens."""

    state_dir: Path
    log_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    @property
    def config(self) -> Path:
        return self.state_dir / "keystone.conf"

    @property
    def database(self) -> Path:
        return self.state_dir / "keystone.sqlite"

    @property
    def setup_log(self) -> Path:
        return self.log_dir / "keystone-setup.log"

    @property
    def log(self) -> Path:
        return self.log_dir / "keystone.log"


def configure(layout: KeystoneLayout) -> None:
    """Write keystone.conf and the fernet/credential key repositories."""
    state = layout.state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database holds password hashes
    files.write_ini(
        layout.config,
        {
            "DEFAULT": {"debug": "false"},
            "database": {"connection": f"sqlite:///{layout.database}"},
            # 12 h: a developer's bed outlives the default 1 h token in a
            # long-running daemon session.
            "token": {"provider": "fernet", "expiration": 43200},
            "fernet_tokens": {"key_repository": state / "fernet-keys"},
            # Receipts are for multi-factor auth, unused here; one repository will do.
            "fernet_receipts": {"key_repository": state / "fernet-keys"},
            "credential": {"key_repository": state / "credential-keys"},
            "catalog": {"driver": "sql"},
            "identity": {
                # bcrypt's minimum cost: each login (clients, Glance's service
                # user) is ~250 ms faster than with the default 12.
                "password_hash_rounds": 4,
                # bcrypt's own limit; a larger value logs a warning per login.
                "max_password_length": 72,
            },
            # In-process cache (one uwsgi process, so it stays coherent): without
            # it every request re-validates its token from SQL, ~300 ms each.
            "cache": {"enabled": "true", "backend": "dogpile.cache.memory"},
        },
    )
    # What `keystone-manage fernet_setup` / `credential_setup` write (a staged
    # key "0" and a primary key "1"), without two 1.5 s interpreter starts.
    for repository in ("fernet-keys", "credential-keys"):
        _write_key_repository(state / repository)


def setup(layout: KeystoneLayout, admin_password: str, region: str) -> None:
    """Create the database and bootstrap the admin user, roles and identity endpoint."""
    manage = ["keystone-manage", "--config-file", str(layout.config)]
    schema_cache.migrated_database(
        "python3-keystone",
        layout.database,
        lambda: processes.run(
            [*manage, "db_sync"],
            layout.setup_log,
            what="keystone-manage db_sync",
            cwd=layout.state_dir,
        ),
    )
    bootstrap = [
        *manage,
        "bootstrap",
        "--bootstrap-username", ADMIN_USER,
        "--bootstrap-project-name", ADMIN_PROJECT,
        "--bootstrap-role-name", "admin",
        "--bootstrap-service-name", "keystone",
        "--bootstrap-region-id", region,
        "--bootstrap-public-url", layout.url,
    ]  # fmt: skip
    # The password goes by environment, not argv: argv is visible in `ps` and logs.
    env = processes.system_env({"OS_BOOTSTRAP_PASSWORD": admin_password})
    processes.run(
        bootstrap,
        layout.setup_log,
        what="keystone-manage bootstrap",
        env=env,
        cwd=layout.state_dir,
    )


def start(layout: KeystoneLayout, mark: str) -> Server:
    """Serve Keystone with uwsgi: one process, one thread (SQLite, low memory)."""
    argv = [
        "uwsgi-core",
        "--plugin", "python3",
        "--http-socket", f"127.0.0.1:{layout.port}",
        "--wsgi-file", WSGI_FILE,
        "--master",
        "--processes", "1",
        "--threads", "1",
        "--die-on-term",
        "--need-app",
        "--buffer-size", "65535",
        # uwsgi's plain http-socket closes every connection after one response;
        # saying so stops pooled clients (requests/keystoneauth) from reusing
        # a dead connection and failing with "connection reset".
        "--add-header", "Connection: close",
    ]  # fmt: skip
    env = processes.system_env({"OS_KEYSTONE_CONFIG_FILES": str(layout.config)})
    return processes.spawn("keystone", argv, layout.log, mark=mark, env=env, cwd=layout.state_dir)


def provision(
    layout: KeystoneLayout,
    admin_password: str,
    first_region: str,
    glance_urls: Mapping[str, str],
    glance_password: str,
) -> None:
    """Create the other regions, the image endpoints and Glance's service user.

    One openstacksdk session for all calls: the ``openstack`` CLI costs ~2 s a call.
    """
    import openstack  # slow import; only ``up`` needs it

    conn = openstack.connect(
        auth_type="password",
        auth_url=layout.url,
        username=ADMIN_USER,
        password=admin_password,
        project_name=ADMIN_PROJECT,
        user_domain_id="default",
        project_domain_id="default",
        region_name=first_region,
        identity_api_version="3",
        interface="public",
        load_envvars=False,
        load_yaml_config=False,
    )
    try:
        _provision(conn, layout.url, first_region, glance_urls, glance_password)
    except openstack.exceptions.SDKException as exc:
        summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TestbedError(f"setting up Keystone failed ({summary}); read {layout.log}") from None
    finally:
        conn.close()


def issue_token(layout: KeystoneLayout, password: str) -> str:
    """An admin token, by a plain request: used to prove Glance accepts Keystone's tokens."""
    domain = {"id": "default"}
    user = {"name": ADMIN_USER, "domain": domain, "password": password}
    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"name": ADMIN_PROJECT, "domain": domain}},
        }
    }
    try:
        _, headers = http.call(
            f"{layout.url}/auth/tokens",
            method="POST",
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )
    except OSError as exc:
        raise TestbedError(f"Keystone refused a login ({exc}); read {layout.log}") from None
    return str(headers["X-Subject-Token"])


def _provision(
    conn: "Connection",
    url: str,
    first_region: str,
    glance_urls: Mapping[str, str],
    glance_password: str,
) -> None:
    identity = cast("IdentityV3", conn.identity)
    # A fresh database: bootstrap made the first region, the identity service
    # and the admin role; everything else is created without look-ups.
    keystone_service = next(identity.services(type="identity"))
    admin_role = next(identity.roles(name="admin"))
    image_service = identity.create_service(name="glance", type="image", enabled=True)
    for region, glance_url in glance_urls.items():
        if region != first_region:
            identity.create_region(id=region)
            _create_endpoint(identity, keystone_service.id, region, url)
        _create_endpoint(identity, image_service.id, region, glance_url)
    project = identity.create_project(name=SERVICE_PROJECT, domain_id="default")
    user = identity.create_user(
        name=GLANCE_USER,
        password=glance_password,
        domain_id="default",
        default_project_id=project.id,
    )
    identity.assign_project_role_to_user(project, user.id, admin_role.id)


def _create_endpoint(identity: "IdentityV3", service_id: str, region: str, url: str) -> None:
    # Public only: clouds.yaml and Glance's auth_token both use interface=public.
    identity.create_endpoint(service_id=service_id, interface="public", url=url, region_id=region)


def _write_key_repository(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("0", "1"):
        files.write_private(path / name, base64.urlsafe_b64encode(os.urandom(32)).decode())
