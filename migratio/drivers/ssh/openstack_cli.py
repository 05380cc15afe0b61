"""Glance at an SSH site, through the ``openstack`` CLI on its external host.

Each call is an argument vector (run by ``RemoteHost.run``, which quotes every
element), ``--os-cloud`` names the host's clouds.yaml entry, and answers are read
from ``-f json``. Image names are passed after ``--``, so a name that looks like
an option (``--file=/etc/shadow``) is still a name.

The CLI's only error channel is its exit status and stderr; they are classified
here, once: connection failures and 5xx answers are transient, everything else
(unknown cloud, refused request, missing file) is permanent.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from migratio.config import OpenStackSshSite
from migratio.drivers.base import DestinationImage, Registration
from migratio.drivers.openstack.mapping import (
    GLANCE_OWNED,
    GLANCE_RESERVED_PREFIX,
    IMAGE_ID,
    optional_int,
    record_status,
    sha512_from_os_hash,
)
from migratio.drivers.ssh.remote import Completed, RemoteHost
from migratio.errors import NotFound, PermanentError, TransientError

TRANSIENT = re.compile(
    r"Unable to establish connection|Connection refused|Connection aborted|timed out|"
    r"Max retries exceeded|RemoteDisconnected|Service Unavailable|Gateway|"
    r"\b50[0-9]\b",
    re.IGNORECASE,
)
NOT_FOUND = re.compile(r"No Image found|could not be found|\b404\b", re.IGNORECASE)
# Properties Glance owns, or the CLI adds itself (the SDK leaves the ``stores``
# field among the properties): not part of what migratio set.
NOT_CUSTOM = GLANCE_OWNED | {"stores"}
NOT_CUSTOM_PREFIXES = (GLANCE_RESERVED_PREFIX, "owner_specified.openstack.")
# `openstack image create --file` reads the file and sends it to Glance, which
# hashes it: allow 8 MiB/s on top of the site's timeout.
UPLOAD_RATE = 8 * 1024 * 1024


class RemoteGlance:
    """The image commands of the ``openstack`` CLI on one external host."""

    def __init__(self, host: RemoteHost, settings: OpenStackSshSite) -> None:
        self.host = host
        self.settings = settings
        self._command = shlex.split(settings.openstack_command)

    def images(self, properties: Mapping[str, str], status: str | None = None) -> list[str]:
        """Ids of the images carrying every one of ``properties`` (any status if None)."""
        argv = ["image", "list", "-f", "json"]
        if status is not None:
            argv += ["--status", status]
        for key, value in properties.items():
            argv += ["--property", f"{key}={value}"]
        rows = self._json(argv, "list images")
        if not isinstance(rows, list):
            raise PermanentError(self.host.message("list images", "the answer is not a list"))
        return [str(row["ID"]) for row in rows if isinstance(row, dict) and "ID" in row]

    def show(self, image_id: str) -> dict[str, Any] | None:
        """The CLI's JSON view of an image now; None when it does not exist."""
        try:
            image = self._json(["image", "show", "-f", "json", _checked_id(image_id)], "show image")
        except NotFound:
            return None
        if not isinstance(image, dict) or "id" not in image:
            raise PermanentError(self.host.message("show image", "the answer is not an image"))
        return image

    def create(
        self, file: str, size: int, registration: Registration, extra: Mapping[str, str]
    ) -> str:
        """Create an image from a file on the host; return its id.

        Every property and tag is an argument of its own; ``min_disk``/``min_ram``
        and the formats are Glance fields. The copy is private (the default of an
        Image API site's policy) and not protected: an SSH site has no policy for them.
        """
        argv = [
            "image", "create", "-f", "json",
            "--disk-format", registration.disk_format,
            "--container-format", registration.container_format,
            "--min-disk", str(registration.min_disk),
            "--min-ram", str(registration.min_ram),
            "--private",
            "--file", file,
        ]  # fmt: skip
        properties = dict(registration.properties)
        if registration.architecture is not None:
            properties["architecture"] = registration.architecture
        properties.update(extra)
        for key, value in properties.items():
            argv += ["--property", f"{key}={value}"]
        for tag in registration.tags:
            argv += ["--tag", tag]
        argv += ["--", registration.name]
        timeout = self.settings.timeout + size / UPLOAD_RATE
        image = self._json(argv, "create image", timeout=timeout)
        if not isinstance(image, dict) or not IMAGE_ID.fullmatch(str(image.get("id"))):
            raise PermanentError(self.host.message("create image", "no image id in the answer"))
        return str(image["id"])

    def delete(self, image_id: str) -> None:
        """Delete an image; one that is already gone is not an error."""
        action = f"delete image {image_id}"
        result = self._run(["image", "delete", _checked_id(image_id)], action)
        if result.status != 0 and not NOT_FOUND.search(result.error_text(2000)):
            raise self._error(action, result)

    # -- transport ------------------------------------------------------------

    def _run(self, argv: list[str], action: str, timeout: float | None = None) -> Completed:
        full = [*self._command, "--os-cloud", self.settings.cloud, *argv]
        return self.host.run(full, action, timeout=timeout)

    def _json(self, argv: list[str], action: str, timeout: float | None = None) -> Any:
        result = self._run(argv, action, timeout)
        if result.status != 0:
            raise self._error(action, result)
        try:
            return json.loads(result.stdout.decode("utf-8"))
        except ValueError:
            raise PermanentError(
                self.host.message(action, "the openstack CLI did not answer JSON")
            ) from None

    def _error(self, action: str, result: Completed) -> PermanentError | TransientError:
        text = result.error_text()
        everything = result.stderr.decode("utf-8", errors="replace")
        if result.status in (126, 127):
            return PermanentError(self.host.message(action, text))
        if NOT_FOUND.search(everything):
            return NotFound(self.host.message(action, text))
        if TRANSIENT.search(everything):
            return TransientError(self.host.message(action, text))
        return PermanentError(self.host.message(action, f"openstack CLI: {text}"))


def destination_image(image: Mapping[str, Any]) -> DestinationImage:
    """The CLI's JSON view of an image as the driver interface sees it: unlike the
    Image API's (``mapping.destination_image``), custom properties and Glance's
    hashes are nested under ``properties``, some typed by the SDK."""
    nested = image.get("properties")
    properties: dict[str, Any] = dict(nested) if isinstance(nested, Mapping) else {}
    return DestinationImage(
        id=str(image["id"]),
        status=record_status(str(image.get("status") or "")),
        sha512=sha512_from_os_hash(properties),
        size=optional_int(image.get("size")),
        properties={
            key: _as_text(value)
            for key, value in properties.items()
            if key not in NOT_CUSTOM and not key.startswith(NOT_CUSTOM_PREFIXES)
        },
    )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _checked_id(image_id: str) -> str:
    # The CLI takes a name or an id; only ids are ever passed, so no name can match.
    if not IMAGE_ID.fullmatch(image_id):
        raise NotFound(f"image {image_id!r}: not a Glance id (a UUID)")
    return image_id
