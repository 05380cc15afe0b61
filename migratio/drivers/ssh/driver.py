"""OpenStack sites reached over SSH: the legacy tool's transport, made safe.

Some sites expose no Image API to the migrating host, only an "external host"
that a user logs in to by key and that runs the ``openstack`` CLI with the site's
credentials. There the payload is uploaded (through OpenSSH's ``ssh``, see
``ssh_stream``; else paramiko's SFTP) into a staging file named by the migration
id (``ssh_staging``), then registered by ``openstack image
create --file`` run on the host (``openstack_cli``), every command built from
quoted argv (``ssh_remote``); host keys are always verified.

Records, as the states see them:
- ``staging:<migration id>``: the staging file, ``open`` until it has been
  registered; resumable.
- a Glance id: the registered image. One of this migration's that did not reach
  ``active`` (an interrupted registration) is reported as ``broken``, so the
  uploading state drops it rather than trying to upload into it.
"""

from __future__ import annotations

import re

from migratio.config import OpenStackSshSite
from migratio.drivers.base import (
    MIGRATION_ID,
    DestinationImage,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
    StreamedGlanceDestination,
    Transfer,
)
from migratio.drivers.ssh.openstack_cli import RemoteGlance, destination_image
from migratio.drivers.ssh.remote import RemoteHost
from migratio.drivers.ssh.staging import Staged, StagingArea
from migratio.errors import IntegrityError, NotFound, PermanentError, TransientError

STAGING_PREFIX = "staging:"
STAGING_RECORD = re.compile(rf"{STAGING_PREFIX}(?P<migration>.*)", re.S)
MIGRATION_ID_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class OpenStackSshSiteDriver(StreamedGlanceDestination):
    """A destination-only OpenStack site behind an SSH external host.

    site_id: the site's id, named in every error message.
    settings: see ``OpenStackSshSite``; the connection is opened on first use.
    """

    def __init__(self, site_id: str, settings: OpenStackSshSite) -> None:
        self.site_id = site_id
        self.settings = settings
        self.host = RemoteHost(site_id, settings)
        self.staging = StagingArea(self.host, settings.staging_dir)
        self.glance = RemoteGlance(self.host, settings)

    # -- destination ----------------------------------------------------------

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        wanted = provenance.as_properties()
        for image_id in self.glance.images(wanted, status="active"):
            shown = self.glance.show(image_id)
            if shown is None or shown.get("disk_format") != disk_format:
                continue
            image = destination_image(shown)
            # Re-checked here: the CLI filters on its side, and a filter it did
            # not apply must not match.
            if image.is_complete and all(image.properties.get(k) == v for k, v in wanted.items()):
                return image
        return None

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """The staging file first; else an image this migration registered."""
        staged = self.staging.find(_checked_migration(migration_id))
        if staged is not None:
            return _staging_record(migration_id, staged)
        images = [self._registered(i) for i in self._images_of(migration_id)]
        found = [image for image in images if image is not None]
        found.sort(key=lambda image: not image.is_complete)
        return found[0] if found else None

    def get_record(self, record_id: str) -> DestinationImage | None:
        migration_id = _staging_migration(record_id)
        if migration_id is not None:
            staged = self.staging.find(migration_id)
            return None if staged is None else _staging_record(migration_id, staged)
        return self._registered(record_id)

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """Nothing is written yet: the staging file appears when bytes arrive, so
        there is never one the migration's ledger does not know about."""
        migration_id = _checked_migration(spec.migration_id)
        self.staging.prepare()
        return DestinationImage(
            id=STAGING_PREFIX + migration_id, status=RecordStatus.OPEN, sha512=None, size=0
        )

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        migration_id = _staging_migration(record_id)
        if migration_id is None:
            raise PermanentError(self._message(f"upload to {record_id}", "not a staging record"))
        return self.staging.upload(migration_id, transfer)

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Create the image from the staged file, or find the one an interrupted
        run created; remove the staged file once the image is active."""
        migration_id = self._migration_of(record_id)
        staged = self.staging.find(migration_id)
        verified = staged if staged is not None and staged.sha512 else None
        result: DestinationImage | None = None
        for image_id in self._images_of(migration_id):
            shown = self.glance.show(image_id)
            if shown is None:
                continue
            image = destination_image(shown)
            usable = image.is_complete and (verified is None or image.sha512 == verified.sha512)
            if usable and result is None:
                result = image
            else:
                self.glance.delete(image_id)
        if result is None:
            if verified is None:
                raise PermanentError(
                    self._message(
                        f"register migration {migration_id}",
                        "no verified staging file is left to register; retry the migration",
                    )
                )
            result = self._create(migration_id, verified, registration)
        if result.is_complete:
            self.staging.remove(migration_id)
        return result

    def remove(self, record_id: str) -> None:
        migration_id = _staging_migration(record_id)
        if migration_id is not None:
            self.staging.remove(migration_id)
            return
        try:
            self.glance.delete(record_id)
        except NotFound:
            return

    def close(self) -> None:
        self.host.close()

    def abort(self) -> None:
        self.host.abort()

    # -- parts ----------------------------------------------------------------

    def _create(
        self, migration_id: str, staged: Staged, registration: Registration
    ) -> DestinationImage:
        image_id = self.glance.create(
            staged.path, staged.size, registration, {MIGRATION_ID: migration_id}
        )
        shown = self.glance.show(image_id)
        if shown is None:
            raise TransientError(self._message("register", f"image {image_id} vanished"))
        image = destination_image(shown)
        if image.is_complete and image.sha512 != staged.sha512:
            self.glance.delete(image_id)
            raise IntegrityError(
                self._message(
                    "register",
                    f"image {image_id} has sha512 {image.sha512}, the staged file "
                    f"{staged.sha512}; the image was removed",
                )
            )
        return image

    def _images_of(self, migration_id: str) -> list[str]:
        return self.glance.images({MIGRATION_ID: _checked_migration(migration_id)})

    def _registered(self, image_id: str) -> DestinationImage | None:
        """An image as a record: not active means its registration was interrupted."""
        try:
            shown = self.glance.show(image_id)
        except NotFound:
            return None
        if shown is None:
            return None
        image = destination_image(shown)
        if image.is_complete:
            return image
        return DestinationImage(image.id, RecordStatus.BROKEN, None, image.size, image.properties)

    def _migration_of(self, record_id: str) -> str:
        migration_id = _staging_migration(record_id)
        if migration_id is not None:
            return migration_id
        shown = self.glance.show(record_id)
        tag = None if shown is None else destination_image(shown).properties.get(MIGRATION_ID)
        if tag is None:
            raise PermanentError(
                self._message(f"register {record_id}", "not an image this migration made")
            )
        return _checked_migration(tag)

    def _message(self, action: str, problem: str) -> str:
        return self.host.message(action, problem)


def _staging_record(migration_id: str, staged: Staged) -> DestinationImage:
    return DestinationImage(
        id=STAGING_PREFIX + migration_id,
        status=RecordStatus.OPEN,
        sha512=staged.sha512,
        size=staged.size,
    )


def _staging_migration(record_id: str) -> str | None:
    """The migration a ``staging:<migration id>`` record belongs to; None for a Glance id."""
    parsed = STAGING_RECORD.fullmatch(record_id)
    return None if parsed is None else _checked_migration(parsed["migration"])


def _checked_migration(migration_id: str) -> str:
    # It names a remote file and is a property value: only plain ids are used.
    if not MIGRATION_ID_FORMAT.fullmatch(migration_id):
        raise PermanentError(f"migration id {migration_id!r} cannot name a staging file")
    return migration_id
