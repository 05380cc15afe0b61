"""OpenStack sites: Glance v2 through openstacksdk's image proxy.

The facade the states see, as a source and as a destination. It says what each
operation means for Glance; the requests themselves (and why they are raw
requests rather than the SDK's ``Image`` resource) are in ``transport``, the
failures' types in ``errors``, and Glance's JSON in the engine's words in
``mapping``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import openstack.connection

from migratio.config import OpenStackSite
from migratio.drivers.base import (
    MIGRATION_ID,
    DestinationDriver,
    DestinationImage,
    Provenance,
    RecordSpec,
    Registration,
    SourceDriver,
    SourceImage,
    StreamedGlanceDestination,
    Transfer,
)
from migratio.drivers.openstack import mapping
from migratio.drivers.openstack.transport import JSON_PATCH, GlanceApi, skip
from migratio.errors import ImageNotFound, NotFound, PermanentError, TransientError


class OpenStackSiteDriver(StreamedGlanceDestination):
    """A Glance v2 site, as source and destination.

    site_id: the site's id, named in every error message.
    settings: ``cloud`` is the clouds.yaml entry (found the OpenStack way, e.g.
        ``OS_CLIENT_CONFIG_FILE``); ``connect_timeout``/``read_timeout`` bound each
        socket operation, not a whole transfer, so large images are fine.
    connection: an already open connection (tests, tools); by default one is opened
        on first use, so a driver for an unreachable site can still be built.
    """

    def __init__(
        self,
        site_id: str,
        settings: OpenStackSite,
        connection: openstack.connection.Connection | None = None,
    ) -> None:
        self.site_id = site_id
        self.settings = settings
        self.api = GlanceApi(site_id, settings, connection)

    # -- source ---------------------------------------------------------------

    def describe(self, image_id: str) -> SourceImage:
        """The image's metadata; its status is reported as is."""
        action = "describe image"
        try:
            image = self.api.json("GET", self.api.path(image_id), action)
        except NotFound:
            raise self._not_found(image_id) from None
        try:
            return mapping.source_image(image)
        except (KeyError, TypeError, ValueError) as exc:
            # Not what Glance answers: a site that does not answer properly (yet).
            problem = f"the answer is not an image ({type(exc).__name__}: {exc})"
            raise TransientError(self.api.message(action, problem)) from None

    @contextmanager
    def read(self, image_id: str, offset: int = 0) -> Iterator[Iterator[bytes]]:
        """Stream the image file from ``offset``; the response is closed when the
        context exits. A Glance that ignores the Range header sends everything, and
        the bytes before ``offset`` are skipped here."""
        action = f"download image {image_id}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self.api.request(
                "GET", self.api.path(image_id, "file"), action, stream=True, headers=headers
            )
        except NotFound:
            raise self._not_found(image_id) from None
        try:
            if response.status_code == 204:
                raise PermanentError(self.api.message(action, "image has no data"))
            chunks = self.api.stream(response, action)
            if offset and response.status_code != 206:
                chunks = skip(chunks, offset)
            yield chunks
        finally:
            response.close()

    # -- destination ----------------------------------------------------------

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        """Filters on the server (Glance matches custom properties exactly)."""
        wanted = {
            **provenance.as_properties(),
            "disk_format": disk_format,
            "status": "active",
        }
        for image in self.api.images(wanted, "find an earlier copy"):
            # Re-checked here: a filter the server did not apply must not match.
            if all(image.get(key) == value for key, value in wanted.items()):
                return mapping.destination_image(image)
        return None

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """Any status; with several, the one furthest along, then the newest."""
        images = [
            image
            for image in self.api.images(
                {MIGRATION_ID: migration_id}, "find the migration's record"
            )
            if image.get(MIGRATION_ID) == migration_id
        ]
        if not images:
            return None
        # Glance lists newest first and min() keeps the first of equals.
        best = min(images, key=mapping.progress_rank)
        return mapping.destination_image(best)

    def get_record(self, record_id: str) -> DestinationImage | None:
        try:
            return mapping.destination_image(
                self.api.json("GET", self.api.path(record_id), "get record")
            )
        except NotFound:
            return None

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        body = {
            "name": spec.name,
            "disk_format": spec.disk_format,
            "container_format": spec.container_format,
            MIGRATION_ID: spec.migration_id,
        }
        return mapping.destination_image(
            self.api.json("POST", "/images", "create record", json=body)
        )

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        """The whole payload, streamed from its first byte: Glance cannot resume an
        upload. An exception the payload stream raises propagates unchanged."""
        chunks = transfer.chunks()
        self.api.upload(self.api.path(record_id, "file"), chunks, f"upload to record {record_id}")
        return None

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Patch the metadata; Glance cannot change formats once data is stored."""
        action = f"register record {record_id}"
        image = self.api.json("GET", self.api.path(record_id), action)
        for key in ("disk_format", "container_format"):
            if image.get(key) != getattr(registration, key):
                problem = f"{key} is {image.get(key)!r}, expected {getattr(registration, key)!r}"
                raise PermanentError(self.api.message(action, problem))
        patch = mapping.patch(
            image,
            registration,
            visibility=self.settings.visibility,
            protected=self.settings.copy_protected(registration.protected),
        )
        if patch:
            image = self.api.json(
                "PATCH",
                self.api.path(record_id),
                action,
                json=patch,
                headers={"Content-Type": JSON_PATCH},
            )
        if self.settings.visibility == "shared":
            self._share(record_id, self.settings.members)
        return mapping.destination_image(image)

    def _share(self, record_id: str, members: tuple[str, ...]) -> None:
        """Add the site's members the image does not have yet (Glance takes
        members only once the image is ``shared``; each must then accept it)."""
        action = f"share record {record_id}"
        listed = self.api.json("GET", self.api.path(record_id, "members"), action)
        present = {str(entry.get("member_id")) for entry in listed.get("members") or ()}
        for member in members:
            if member not in present:
                self.api.json(
                    "POST", self.api.path(record_id, "members"), action, json={"member": member}
                )

    def remove(self, record_id: str) -> None:
        """Delete the record; one of this migration's that the site's policy made
        ``protected`` (then its checks failed) is unprotected first."""
        action = f"remove record {record_id}"
        with suppress(NotFound):
            image = self.api.json("GET", self.api.path(record_id), action)
            if image.get("protected") is True and image.get(MIGRATION_ID):
                self.api.json(
                    "PATCH",
                    self.api.path(record_id),
                    action,
                    json=[{"op": "replace", "path": "/protected", "value": False}],
                    headers={"Content-Type": JSON_PATCH},
                )
            self.api.request("DELETE", self.api.path(record_id), action).close()

    def close(self) -> None:
        self.api.close()

    def abort(self) -> None:
        self.api.abort()

    def _not_found(self, image_id: str) -> ImageNotFound:
        return ImageNotFound(f"site {self.site_id}: image {image_id} does not exist")


def _roles(driver: OpenStackSiteDriver) -> tuple[SourceDriver, DestinationDriver]:
    """Never called: mypy checks here that the facade plays both roles of ``base``."""
    return driver, driver
