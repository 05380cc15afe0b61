"""AWS sites: an image becomes an EBS snapshot and an AMI that boots from it.

This is the facade the migration states see (``DestinationDriver``). The
snapshot is made by the site's upload method (``upload``: ebs-direct or
import-snapshot), chosen once when the driver is built; ``register`` makes the
AMI (``amis``). Record ids are parsed once into typed references (``records``)
and dispatched on their type. Everything migratio creates carries the
migration id as a tag, so a resumed run finds it.
"""

from __future__ import annotations

import botocore
import botocore.loaders

from migratio.config import AwsSite
from migratio.drivers.aws import ami_boot
from migratio.drivers.aws.amis import Amis, ami_image
from migratio.drivers.aws.copies import RegionalCopies
from migratio.drivers.aws.ebs_direct import EbsDirect
from migratio.drivers.aws.import_snapshot import ImportSnapshot, ImportTasks
from migratio.drivers.aws.records import (
    AmiRef,
    ImportTaskRef,
    RecordRef,
    RegionalAmiRef,
    SnapshotRef,
    StagedObjectRef,
    parse_record,
)
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.aws.sharing import share_image
from migratio.drivers.aws.snapshots import Snapshots, snapshot_image
from migratio.drivers.aws.staging import Staging
from migratio.drivers.aws.upload import UploadMethod
from migratio.drivers.base import (
    DestinationImage,
    Provenance,
    RecordSpec,
    RecordStatus,
    Registration,
    Tracker,
    Transfer,
)
from migratio.errors import ConfigError, NotFound, PermanentError


class AwsSiteDriver:
    """An AWS region as a destination; images become AMIs.

    site_id: the site's id, named in every error message.
    settings: region, credentials by ``profile`` or boto3's default chain,
        ``endpoint_url`` for emulators, ``method`` (ebs-direct or
        import-snapshot), ``bucket`` (import-snapshot), ``workers``, the socket
        timeouts and ``timeout`` (how long ``register`` waits for an AMI);
        encryption (``encryption``), ``share_with`` and ``copy_to_regions``
        (``distribute``).
    clients: already made connections (tests, tools); by default made on first use.
    """

    def __init__(self, site_id: str, settings: AwsSite, clients: AwsClients | None = None) -> None:
        self.site_id = site_id
        self.settings = settings
        self.clients = clients or AwsClients(site_id, settings)
        self.snapshots = Snapshots(self.clients)
        self.amis = Amis(self.clients, settings.timeout, settings)
        # Staged objects and import tasks are removed whatever the method is now:
        # a migration may have made them before the site's method was changed.
        self.staging = Staging(self.clients, settings.bucket)
        self.tasks = ImportTasks(self.clients)
        self.copies = RegionalCopies(self.clients, settings)
        self.method = self._upload_method()

    def _upload_method(self) -> UploadMethod:
        if self.settings.method == "import-snapshot":
            return ImportSnapshot(
                self.clients,
                self.snapshots,
                self.staging,
                self.tasks,
                self.settings.bucket,
                self.settings.workers,
            )
        return EbsDirect(self.clients, self.snapshots, self.settings.workers)

    # -- destination ------------------------------------------------------------

    @property
    def required_disk_format(self) -> str:
        return self.method.required_disk_format

    @property
    def wants_file(self) -> bool:
        return True

    @property
    def reads_disk_map(self) -> bool:
        return self.method.reads_disk_map

    @property
    def reads_while_downloading(self) -> bool:
        return self.method.reads_disk_map and self.settings.follow_download

    @property
    def takes_base_version(self) -> bool:
        """ebs-direct snapshots can start from an earlier version's; imports cannot."""
        return isinstance(self.method, EbsDirect)

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        """An available AMI tagged with this source's uuid, site and sha512."""
        return self.amis.copy_of(provenance)

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """The migration's snapshot (furthest along first), else its staged S3
        object (import-snapshot), else an AMI it registered."""
        return (
            self.snapshots.best_of(migration_id)
            or self.method.staged(migration_id)
            or self.amis.of_migration(migration_id)
        )

    def get_record(self, record_id: str) -> DestinationImage | None:
        ref = self._ref(record_id)
        try:
            match ref:
                case SnapshotRef():
                    return snapshot_image(self.snapshots.get(ref.id))
                case AmiRef():
                    return ami_image(self.amis.get(ref.id))
                case StagedObjectRef():
                    if self.staging.exists(ref):
                        return DestinationImage(ref.id, RecordStatus.OPEN, None, None)
                    return None
                case RegionalAmiRef():
                    copy = self.copies.described(ref)
                    return None if copy is None else ami_image(copy)
                case ImportTaskRef():
                    # An artifact, never a record the states hold.
                    raise PermanentError(
                        f"site {self.site_id}: {record_id!r} is not a record of an AWS site"
                    )
        except NotFound:
            return None

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        """The snapshot (or staged object) to upload into, once the image is known
        to be one AWS can boot as it asks (its architecture, boot mode, TPM)."""
        try:
            ami_boot.check(spec.architecture, spec.properties, self.settings)
        except PermanentError as exc:
            raise PermanentError(f"site {self.site_id}: {exc}") from None
        return self.method.create_record(spec)

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        if transfer.path is None:
            raise PermanentError(f"site {self.site_id}: receiving needs the payload as a file")
        return self.method.receive(self._ref(record_id), transfer.path, transfer)

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Find the AMI this migration registered or register it; tag it either way."""
        match self._ref(record_id):
            case AmiRef(image_id):
                migration_id = self.amis.migration_of(image_id)
                snapshot = self.snapshots.finished_of(migration_id)
                return self.amis.retag(image_id, registration, snapshot)
            case SnapshotRef(snapshot_id):
                return self.amis.register(self.snapshots.finished(snapshot_id), registration)
            case StagedObjectRef() as staged:
                # What VM Import made of the staged object.
                snapshot = self.snapshots.finished_of(staged.migration_id)
                return self.amis.register(snapshot, registration)
            case ImportTaskRef() | RegionalAmiRef() as other:
                raise PermanentError(f"site {self.site_id}: {other.id} is not a record to register")

    def distribute(self, image_id: str, tracker: Tracker) -> tuple[DestinationImage, ...]:
        """Share the AMI (``share_with``) and copy it to ``copy_to_regions``;
        the copies once all are available."""
        settings = self.settings
        if not (settings.share_with or settings.copy_to_regions):
            return ()
        ref = self._ref(image_id)
        if not isinstance(ref, AmiRef):
            raise PermanentError(f"site {self.site_id}: {image_id} is not an AMI to distribute")
        home = self.amis.get(ref.id)
        if settings.share_with:
            # EC2 describes the AMI's own snapshot; an emulator may not (moto does not).
            snapshot = self.snapshots.finished_of(self.amis.migration_of(ref.id))
            share_image(
                self.site_id,
                self.clients.ec2,
                home,
                settings.share_with,
                snapshots=[str(snapshot["SnapshotId"])],
            )
        return self.copies.make(home, tracker)

    def remove(self, record_id: str) -> None:
        match self._ref(record_id):
            case AmiRef(image_id):
                self.amis.deregister(image_id)
            case SnapshotRef(snapshot_id):
                self.snapshots.delete(snapshot_id, release=self.amis.deregister_migration)
            case StagedObjectRef() as staged:
                self.staging.delete(staged)
            case ImportTaskRef(task_id):
                self.tasks.cancel(task_id)
            case RegionalAmiRef() as copy:
                self.copies.remove(copy)

    def close(self) -> None:
        self.clients.close()

    def abort(self) -> None:
        self.clients.abort()

    def _ref(self, record_id: str) -> RecordRef:
        return parse_record(self.site_id, record_id)


def check_region(site_id: str, settings: AwsSite) -> None:
    """Refuse a region botocore does not know, unless an endpoint is given
    (emulators and private endpoints answer for any region name)."""
    if settings.endpoint_url:
        return
    # botocore's own endpoint data, read without a session: no profile or
    # credentials are looked at (a bad AWS_PROFILE must not pass for a bad region).
    endpoints = botocore.loaders.create_loader().load_data("endpoints")
    known = {region for partition in endpoints["partitions"] for region in partition["regions"]}
    for key, region in (
        ("region", settings.region),
        *(("copy_to_regions", r) for r in settings.copy_to_regions),
    ):
        if region not in known:
            raise ConfigError(
                site_id,
                key,
                f"unknown AWS region {region!r} (botocore {botocore.__version__} "
                "knows none by that name; set endpoint_url for a private or newer one)",
            )
