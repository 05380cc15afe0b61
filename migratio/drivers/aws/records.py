"""What an AWS record id names, parsed once into a typed reference.

The engine and the ledger keep record ids as strings (``snap-0abc``,
``ami-0abc``, ``s3://bucket/migratio/<migration>/<stamp>.vmdk``,
``import-snap-0abc``, ``eu-central-1/ami-0abc`` for a copy in another region).
The driver turns each into one of the references here
by a table of full-match patterns, then dispatches on the reference's type, so
no code guesses what an id is from how it starts. References are plain values:
they never call AWS themselves (the site's parts do).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from migratio.errors import PermanentError

S3_SCHEME = "s3://"
# Where import-snapshot stages a migration's VMDKs: one key per record.
STAGING_ROOT = "migratio"


@dataclass(frozen=True)
class SnapshotRef:
    """An EBS snapshot: the record ebs-direct writes, and what VM Import makes."""

    id: str


@dataclass(frozen=True)
class AmiRef:
    """An AMI: the registered, finished copy."""

    id: str


@dataclass(frozen=True)
class ImportTaskRef:
    """An EC2 VM Import task (an artifact: cancelled when the migration ends)."""

    id: str


@dataclass(frozen=True)
class StagedObjectRef:
    """Where import-snapshot stages a migration's VMDK in S3 before VM Import."""

    bucket: str
    key: str

    @property
    def id(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def migration_id(self) -> str:
        """The migration whose object this is (the key is ``migratio/<id>/<stamp>.vmdk``)."""
        parts = self.key.split("/")
        if len(parts) != 3 or parts[0] != STAGING_ROOT:
            raise PermanentError(f"{self.id} is not an object migratio staged")
        return parts[1]

    @classmethod
    def for_migration(cls, bucket: str, migration_id: str) -> StagedObjectRef:
        # A fresh key per record: a record removed and made again (after a failed
        # import, say) must not inherit the old one's upload or import task.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"
        return cls(bucket, f"{staging_prefix(migration_id)}{stamp}.vmdk")


@dataclass(frozen=True)
class RegionalAmiRef:
    """A copy of the AMI in another region (``copy_to_regions``): ``<region>/<ami id>``."""

    region: str
    image_id: str

    @property
    def id(self) -> str:
        return f"{self.region}/{self.image_id}"


RecordRef = SnapshotRef | AmiRef | ImportTaskRef | StagedObjectRef | RegionalAmiRef

# EC2 ids are a prefix and lowercase hex (8 or 17 digits at AWS, 17 at moto).
PATTERNS: tuple[tuple[re.Pattern[str], type[SnapshotRef | AmiRef | ImportTaskRef]], ...] = (
    (re.compile(r"snap-[0-9a-f]+"), SnapshotRef),
    (re.compile(r"ami-[0-9a-f]+"), AmiRef),
    (re.compile(r"import-snap-[0-9a-f]+"), ImportTaskRef),
)
STAGED_OBJECT = re.compile(re.escape(S3_SCHEME) + r"(?P<bucket>[^/]+)/(?P<key>.+)")
REGIONAL_AMI = re.compile(r"(?P<region>[a-z]{2}(-[a-z]+)+-\d+)/(?P<image>ami-[0-9a-f]+)")


def parse_record(site_id: str, record_id: str) -> RecordRef:
    """The reference ``record_id`` is; PermanentError when it names nothing an
    AWS site holds (an id from another kind of site, or a mangled one)."""
    for pattern, kind in PATTERNS:
        if pattern.fullmatch(record_id):
            return kind(record_id)
    if staged := STAGED_OBJECT.fullmatch(record_id):
        return StagedObjectRef(staged["bucket"], staged["key"])
    if copy := REGIONAL_AMI.fullmatch(record_id):
        return RegionalAmiRef(copy["region"], copy["image"])
    raise PermanentError(f"site {site_id}: {record_id!r} is not a record of an AWS site")


def staging_prefix(migration_id: str) -> str:
    return f"{STAGING_ROOT}/{migration_id}/"
