"""Staged S3 objects (import-snapshot): found by the migration's key prefix, removed.

A staged VMDK is the import-snapshot record until VM Import has made a
snapshot of it; then it is deleted. An unfinished multipart upload counts as
staged too: it holds parts a resumed run reuses, and costs until aborted.
"""

from __future__ import annotations

import botocore.exceptions

from migratio.drivers.aws.errors import error_code, translated
from migratio.drivers.aws.records import StagedObjectRef, staging_prefix
from migratio.drivers.aws.session import AwsClients
from migratio.errors import NotFound


class Staging:
    """The objects migratio staged in S3 for one site.

    clients: the site's connections (``s3``).
    bucket: the site's staging bucket; None (ebs-direct) when it has none.
    """

    def __init__(self, clients: AwsClients, bucket: str | None) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.bucket = bucket

    def newest_of(self, migration_id: str) -> StagedObjectRef | None:
        """The newest object or unfinished upload under the migration's prefix."""
        if not self.bucket:
            return None
        prefix = staging_prefix(migration_id)
        try:
            with translated(self.site_id, f"list staged uploads of migration {migration_id}"):
                s3 = self.clients.s3
                uploads = s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
                objects = s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        except NotFound:
            return None
        keys = [str(u["Key"]) for u in uploads.get("Uploads", [])]
        keys += [str(o["Key"]) for o in objects.get("Contents", [])]
        return StagedObjectRef(self.bucket, max(keys)) if keys else None

    def exists(self, target: StagedObjectRef) -> bool:
        """True while the object, or an unfinished upload to it, is there."""
        with translated(self.site_id, f"look for {target.id}"):
            s3 = self.clients.s3
            uploads = s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
            objects = s3.list_objects_v2(Bucket=target.bucket, Prefix=target.key)
        keys = {u["Key"] for u in uploads.get("Uploads", [])}
        keys |= {o["Key"] for o in objects.get("Contents", [])}
        return target.key in keys

    def delete(self, target: StagedObjectRef) -> None:
        """Abort unfinished uploads to the object and delete it; gone is fine."""
        try:
            with translated(self.site_id, f"remove {target.id}"):
                s3 = self.clients.s3
                uploads = s3.list_multipart_uploads(Bucket=target.bucket, Prefix=target.key)
                for upload in uploads.get("Uploads", []):
                    if upload["Key"] == target.key:
                        try:
                            s3.abort_multipart_upload(
                                Bucket=target.bucket, Key=target.key, UploadId=upload["UploadId"]
                            )
                        except botocore.exceptions.ClientError as exc:
                            if error_code(exc) != "NoSuchUpload":
                                raise
                s3.delete_object(Bucket=target.bucket, Key=target.key)
        except NotFound:
            return
