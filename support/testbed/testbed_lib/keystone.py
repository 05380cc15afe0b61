"""One real Keystone (Debian's package) under uwsgi per site: each site is its own cloud.

As Atmosphere's sites are, each cloud has its own users, projects, tokens and
catalogue (one region, one image endpoint). Its ``admin`` belongs to the cloud's
operator; migratio's account is a plain ``member`` of its own project, so
whatever Glance keeps for admins (e.g. ``public`` visibility) is refused to it
as it would be in production.
"""

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import files, http, keystone_db, processes, schema_cache
from .errors import TestbedError
from .processes import Server

if TYPE_CHECKING:
    from openstack.connection import Connection
    from openstack.identity.v3._proxy import Proxy as IdentityV3

ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"
SERVICE_PROJECT = "service"
GLANCE_USER = "glance"
MIGRATIO_USER = "migratio"
MIGRATIO_PROJECT = "migratio"
MEMBER_ROLE = "member"  # made by `keystone-manage bootstrap`, with admin and reader
WSGI_FILE = "/usr/bin/keystone-wsgi-public"
# 12 h: a developer's bed outlives the default 1 h token in a long-running
# daemon session. Tests that need tokens to expire set it short for a while
# (``set_token_expiration``).
TOKEN_EXPIRATION = 43200


@dataclass(frozen=True)
class Passwords:
    """One cloud's passwords: its operator's admin, Glance's service user, migratio."""

    admin: str
    glance: str
    migratio: str

    @classmethod
    def new(cls) -> "Passwords":
        return cls(*(secrets.token_urlsafe(24) for _ in range(3)))


@dataclass(frozen=True)
class KeystoneLayout:
    """Where one site's Keystone keeps its state and log, and where it listens."""

    site: str
    state_dir: Path
    log_dir: Path
    port: int

    @property
    def name(self) -> str:
        return f"keystone-{self.site}"

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
        return self.log_dir / f"{self.name}-setup.log"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"


def configure(layout: KeystoneLayout) -> None:
    """Write keystone.conf and the fernet/credential key repositories."""
    state = layout.state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database holds password hashes
    write_config(layout, TOKEN_EXPIRATION)
    # What `keystone-manage fernet_setup` / `credential_setup` write (a staged
    # key "0" and a primary key "1"), without two 1.5 s interpreter starts.
    for repository in ("fernet-keys", "credential-keys"):
        _write_key_repository(state / repository)


def write_config(layout: KeystoneLayout, token_expiration: int) -> None:
    """(Re)write keystone.conf; the keys stay, so tokens already issued stay valid."""
    state = layout.state_dir
    files.write_ini(
        layout.config,
        {
            "DEFAULT": {"debug": "false"},
            "database": {"connection": f"sqlite:///{layout.database}"},
            "token": {"provider": "fernet", "expiration": token_expiration},
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


def token_expiration(layout: KeystoneLayout) -> int:
    """The ``[token] expiration`` keystone.conf holds now."""
    for line in layout.config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "expiration":
            return int(value)
    return TOKEN_EXPIRATION


def setup(layout: KeystoneLayout, admin_password: str) -> None:
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
        "--bootstrap-region-id", layout.site,
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


def restore(layout: KeystoneLayout, passwords: Passwords, glance_url: str) -> bool:
    """Use the cached provisioned database of the site, if there is one (see keystone_db)."""
    return keystone_db.restore(
        layout.site,
        layout.database,
        {"identity": layout.url, "image": glance_url},
        _by_user(passwords),
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
    return processes.spawn(layout.name, argv, layout.log, mark=mark, env=env, cwd=layout.state_dir)


def provision(layout: KeystoneLayout, passwords: Passwords, glance_url: str) -> None:
    """Create the site's image endpoint, Glance's service user and migratio's member account.

    One openstacksdk session for all calls: the ``openstack`` CLI costs ~2 s a call.
    """
    import openstack  # slow import; only ``up`` needs it

    conn = openstack.connect(
        auth_type="password",
        auth_url=layout.url,
        username=ADMIN_USER,
        password=passwords.admin,
        project_name=ADMIN_PROJECT,
        user_domain_id="default",
        project_domain_id="default",
        region_name=layout.site,
        identity_api_version="3",
        interface="public",
        load_envvars=False,
        load_yaml_config=False,
    )
    try:
        _provision(conn, layout.site, glance_url, passwords)
        keystone_db.store(layout.site, layout.database, list(_by_user(passwords)))
    except openstack.exceptions.SDKException as exc:
        summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TestbedError(f"setting up Keystone failed ({summary}); read {layout.log}") from None
    finally:
        conn.close()


def issue_token(layout: KeystoneLayout, password: str) -> str:
    """A token of migratio's member account, by a plain request: used to prove the
    site's Glance accepts the tokens of its own Keystone."""
    domain = {"id": "default"}
    user = {"name": MIGRATIO_USER, "domain": domain, "password": password}
    body = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": {"name": MIGRATIO_PROJECT, "domain": domain}},
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


def _provision(conn: "Connection", region: str, glance_url: str, passwords: Passwords) -> None:
    identity = cast("IdentityV3", conn.identity)
    # A fresh database: bootstrap made the region, the identity service and the
    # admin, member and reader roles; everything else is created without look-ups.
    roles = {role.name: role for role in identity.roles()}
    image_service = identity.create_service(name="glance", type="image", enabled=True)
    _create_endpoint(identity, image_service.id, region, glance_url)
    # Glance's own service user validates every token it is shown: the cloud's
    # operator gives it admin, as deployments do.
    service = identity.create_project(name=SERVICE_PROJECT, domain_id="default")
    glance = identity.create_user(
        name=GLANCE_USER,
        password=passwords.glance,
        domain_id="default",
        default_project_id=service.id,
    )
    identity.assign_project_role_to_user(service, glance.id, roles["admin"].id)
    project = identity.create_project(name=MIGRATIO_PROJECT, domain_id="default")
    migratio = identity.create_user(
        name=MIGRATIO_USER,
        password=passwords.migratio,
        domain_id="default",
        default_project_id=project.id,
    )
    identity.assign_project_role_to_user(project, migratio.id, roles[MEMBER_ROLE].id)


def _by_user(passwords: Passwords) -> dict[str, str]:
    return {
        ADMIN_USER: passwords.admin,
        GLANCE_USER: passwords.glance,
        MIGRATIO_USER: passwords.migratio,
    }


def _create_endpoint(identity: "IdentityV3", service_id: str, region: str, url: str) -> None:
    # Public only: clouds.yaml and Glance's auth_token both use interface=public.
    identity.create_endpoint(service_id=service_id, interface="public", url=url, region_id=region)


def _write_key_repository(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("0", "1"):
        files.write_private(path / name, base64.urlsafe_b64encode(os.urandom(32)).decode())
