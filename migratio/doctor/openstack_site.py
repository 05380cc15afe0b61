"""An OpenStack site: its clouds.yaml entry, a Keystone token, Glance's image API,
and whether the account may list and create images.

Creating is checked by doing it, the way a migration starts: an empty record
(``queued``, no data, private, named ``migratio-doctor-probe`` and tagged with a
``doctor-probe-...`` migration id, which no migration has) is created and
deleted at once. Glance has no dry run, and its policy is not readable by the
accounts it governs, so nothing short of creating one proves that an upload can
start. The record holds no bytes and is visible to the account alone; should
the delete fail, the line names it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import openstack
import openstack.config
import openstack.connection
import openstack.exceptions
import yaml

from migratio.config import OpenStackSite
from migratio.doctor.result import Check, Verdict, fail, ok
from migratio.doctor.runner import Chain, client_timeout
from migratio.drivers.base import RecordSpec
from migratio.drivers.openstack.driver import OpenStackSiteDriver
from migratio.drivers.openstack.errors import translated
from migratio.drivers.openstack.transport import GlanceApi

PROBE_NAME = "migratio-doctor-probe"
PROBE_MIGRATION_PREFIX = "doctor-probe-"
# Keys of a clouds.yaml auth section whose values must never reach a line.
SECRET_AUTH_KEYS = ("password", "secret", "token", "key")


def chain(site_id: str, settings: OpenStackSite, timeout: float) -> Chain:
    probe = GlanceProbe(site_id, settings, client_timeout(settings.timeout, timeout))
    name = f"site {site_id}"
    return Chain(
        name,
        [
            Check(f"{name}: clouds.yaml entry", probe.cloud_entry),
            Check(f"{name}: authentication", probe.authentication),
            Check(f"{name}: image API", probe.image_api),
            Check(f"{name}: list images", probe.list_images, gate=False),
            Check(f"{name}: create images", probe.create_image, gate=False),
        ],
        close=probe.close,
        secrets=probe.secrets,
    )


class GlanceProbe:
    """The checks of one OpenStack site, sharing one connection, in order."""

    def __init__(self, site_id: str, settings: OpenStackSite, timeout: float) -> None:
        self.site_id = site_id
        self.settings = settings
        self.timeout = timeout
        self._region: Any = None
        self._connection: openstack.connection.Connection | None = None

    def cloud_entry(self) -> Verdict:
        cloud = self.settings.cloud
        config = openstack.config.OpenStackConfig()
        try:
            self._region = config.get_one(cloud=cloud, api_timeout=self.timeout)
        except openstack.exceptions.ConfigException as exc:
            return fail(f"clouds.yaml entry {cloud!r}: {exc} ({_where(config)})")
        return ok(f"entry {cloud!r} in {config.config_filename or 'the environment (OS_*)'}")

    def authentication(self) -> Verdict:
        self._connection = openstack.connection.Connection(config=self._region)
        session = self._connection.session
        with translated(self.site_id, "authenticate"):
            # keystoneauth's own errors (the SDK's authorize() hides a 401 in its own)
            session.get_token()
            auth: Any = session.auth
            access = auth.get_access(session)
        expires = f", expires {access.expires:%Y-%m-%d %H:%M} UTC" if access.expires else ""
        scope = f" in project {access.project_name}" if access.project_name else ""
        return ok(f"token for user {access.username}{scope} from {self._auth_url()}{expires}")

    def image_api(self) -> Verdict:
        proxy = self._connected().image
        with translated(self.site_id, "discover the image API"):
            endpoint = proxy.get_endpoint()
            version = proxy.get_api_major_version()
        if not version or version[0] != 2:
            shown = ".".join(map(str, version)) if version else "none"
            return fail(f"Glance at {endpoint} offers image API {shown}; migratio speaks v2")
        return ok(f"Glance at {endpoint}: image API v{'.'.join(map(str, version))}")

    def list_images(self) -> Verdict:
        api = GlanceApi(self.site_id, self.settings, self._connected())
        api.json("GET", "/images", "list images", params={"limit": 1})
        return ok("the account can list images")

    def create_image(self) -> Verdict:
        driver = OpenStackSiteDriver(self.site_id, self.settings, self._connected())
        spec = RecordSpec(
            migration_id=f"{PROBE_MIGRATION_PREFIX}{uuid.uuid4().hex}",
            name=PROBE_NAME,
            disk_format="raw",
            container_format="bare",
        )
        record = driver.create_record(spec)
        try:
            driver.remove(record.id)
        except Exception as exc:
            return fail(
                f"created the empty probe image {record.id} ({PROBE_NAME}) but could not "
                f"delete it, delete it by hand: {exc}"
            )
        return ok(
            f"the account can create and delete images (an empty queued probe image, "
            f"{record.id}, created and deleted)"
        )

    def secrets(self) -> list[str]:
        """The entry's secret values, so no error text can show them."""
        auth = getattr(self._region, "config", {}).get("auth", {}) if self._region else {}
        return [
            str(value)
            for key, value in auth.items()
            if value and any(word in key.lower() for word in SECRET_AUTH_KEYS)
        ]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def _connected(self) -> openstack.connection.Connection:
        assert self._connection is not None, "authentication runs first"
        return self._connection

    def _auth_url(self) -> str:
        auth = self._region.config.get("auth", {}) if self._region is not None else {}
        return str(auth.get("auth_url") or "the entry's auth_url")


def _where(config: openstack.config.OpenStackConfig) -> str:
    """Which clouds.yaml was read, or why none was: openstacksdk skips a file that
    is not valid YAML with only a log line, so the entry just seems missing."""
    if config.config_filename:
        return f"read {config.config_filename}"
    for name in getattr(config, "_config_files", []):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            # The position only: a YAML error quotes the line, which may hold a password.
            mark = getattr(exc, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            return f"{path} is not valid YAML{line}"
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read {path}: {exc}"
    return "no clouds.yaml found: set OS_CLIENT_CONFIG_FILE or see openstacksdk's search path"
