"""An AWS site: the credential chain, the EC2 endpoint, the permissions a
migration needs, and EBS direct (or, for import-snapshot, the bucket).

Permissions are asked with ``DryRun=True`` where EC2 offers it: AWS answers
``DryRunOperation`` when the call would be allowed and ``UnauthorizedOperation``
when not, and does nothing either way. The ids in those calls belong to nothing,
so even an endpoint that ignored DryRun could not change anything. An endpoint
that answers anything else (emulators do, for some actions) gets ``warn: cannot
check``. EBS direct and S3 have no dry run: they are shown reachable and the
credentials accepted with a read-only call, and writing is left to the first
migration. The keys themselves are never shown: only where boto3 found them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import boto3
import botocore.exceptions as boto
import botocore.parsers

from migratio.config import AwsSite
from migratio.doctor.result import Check, Verdict, fail, ok, warn
from migratio.doctor.runner import Chain, client_timeout
from migratio.drivers.aws.ami_boot import register_arguments
from migratio.drivers.aws.errors import error_code, http_status, translated
from migratio.drivers.aws.session import AwsClients
from migratio.text import error_text, one_line

# Well-formed ids that name nothing.
NO_SNAPSHOT = "snap-00000000000000000"
NO_AMI = "ami-00000000000000000"
NO_IMPORT_TASK = "import-snap-00000000000000000"
# The tag the dry runs would set: none of migratio's own, so an endpoint that
# ignored DryRun could not relabel a real snapshot.
PROBE_TAG = {"Key": "migratio_doctor_probe", "Value": "dry-run"}
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
CREDENTIALS_REFUSED = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
NO_CREDENTIALS = (
    "no credentials: boto3's chain found none (environment, shared credentials and "
    "config files, container or instance role)"
)


def chain(site_id: str, settings: AwsSite, timeout: float) -> Chain:
    probe = AwsProbe(site_id, settings, client_timeout(settings.timeout, timeout))
    name = f"site {site_id}"
    checks = [
        Check(f"{name}: credentials", probe.credentials),
        Check(f"{name}: EC2 endpoint", probe.endpoint),
        *(
            Check(f"{name}: permission ec2:{action}", check, gate=False)
            for action, check in probe.permissions().items()
        ),
    ]
    if settings.method == "ebs-direct":
        checks.append(Check(f"{name}: EBS direct", probe.ebs_direct, gate=False))
    else:
        checks.append(Check(f"{name}: bucket", probe.bucket, gate=False))
    return Chain(name, checks, close=probe.clients.close)


class AwsProbe:
    """The checks of one AWS site, sharing its clients."""

    def __init__(self, site_id: str, settings: AwsSite, timeout: float) -> None:
        self.site_id = site_id
        self.settings = settings.model_copy(update={"timeout": timeout})
        self.clients = AwsClients(site_id, self.settings)

    def credentials(self) -> Verdict:
        profile = self.settings.profile
        try:
            session = boto3.session.Session(profile_name=profile, region_name=self.settings.region)
            found = session.get_credentials()
        except boto.ProfileNotFound:
            return fail(f"profile {profile!r} not found in {_aws_files()}")
        except boto.BotoCoreError as exc:
            return fail(f"boto3's credential chain failed: {error_text(exc)}")
        if found is None:
            return fail(NO_CREDENTIALS)
        named = f"profile {profile!r}, " if profile else ""
        return ok(f"found by boto3's chain ({named}source: {found.method})")

    def endpoint(self) -> Verdict:
        ec2 = self.clients.ec2
        url = ec2.meta.endpoint_url
        with translated(self.site_id, f"reach EC2 at {url}"):
            try:
                ec2.describe_regions(RegionNames=[self.settings.region], DryRun=True)
            except boto.ClientError as exc:
                code = error_code(exc)
                if code in CREDENTIALS_REFUSED:
                    return fail(f"EC2 at {url} refuses the credentials: {_answer(exc)}")
                if code != "DryRunOperation" and code not in DENIED:
                    return fail(f"EC2 at {url}: {_answer(exc)}")
        return ok(f"EC2 at {url} answers in {self.settings.region} and accepts the credentials")

    def permissions(self) -> dict[str, Callable[[], Verdict]]:
        """The EC2 actions a migration to this site calls, each checked by a dry run."""
        dry_run = self._dry_run
        checks: dict[str, Callable[[], Verdict]] = {
            "DescribeImages": lambda: dry_run(
                lambda ec2: ec2.describe_images(Owners=["self"], DryRun=True), read_only=True
            ),
            "DescribeSnapshots": lambda: dry_run(
                lambda ec2: ec2.describe_snapshots(OwnerIds=["self"], DryRun=True), read_only=True
            ),
            "CreateTags": lambda: dry_run(
                lambda ec2: ec2.create_tags(
                    Resources=[self._own_resource()], Tags=[PROBE_TAG], DryRun=True
                )
            ),
            "RegisterImage": lambda: dry_run(
                lambda ec2: ec2.register_image(**_register(self.settings))
            ),
            "DeregisterImage": lambda: dry_run(
                lambda ec2: ec2.deregister_image(ImageId=NO_AMI, DryRun=True)
            ),
            "DeleteSnapshot": lambda: dry_run(
                lambda ec2: ec2.delete_snapshot(SnapshotId=NO_SNAPSHOT, DryRun=True)
            ),
        }
        if self.settings.method == "import-snapshot":
            container = {
                "Format": "VMDK",
                "UserBucket": {"S3Bucket": self.settings.bucket, "S3Key": "migratio-doctor-probe"},
            }
            checks["ImportSnapshot"] = lambda: dry_run(
                lambda ec2: ec2.import_snapshot(DiskContainer=container, DryRun=True)
            )
            checks["DescribeImportSnapshotTasks"] = lambda: dry_run(
                lambda ec2: ec2.describe_import_snapshot_tasks(DryRun=True), read_only=True
            )
            checks["CancelImportTask"] = lambda: dry_run(
                lambda ec2: ec2.cancel_import_task(ImportTaskId=NO_IMPORT_TASK, DryRun=True)
            )
        return checks

    def ebs_direct(self) -> Verdict:
        """A block list of a snapshot that does not exist: a not-found answer
        proves EBS direct is reachable and takes the credentials."""
        ebs = self.clients.ebs
        url = ebs.meta.endpoint_url
        untested = "StartSnapshot/PutSnapshotBlock have no dry run: the first migration tries them"
        with translated(self.site_id, f"reach EBS direct at {url}"):
            try:
                ebs.list_snapshot_blocks(SnapshotId=NO_SNAPSHOT, MaxResults=100)
            except boto.ClientError as exc:
                code, status = error_code(exc), http_status(exc)
                if code in CREDENTIALS_REFUSED:
                    return fail(f"EBS direct at {url} refuses the credentials: {_answer(exc)}")
                if status >= 500 or status == 0:
                    return warn(
                        f"EBS direct at {url} is reachable but answered {_answer(exc)} for a "
                        "snapshot that does not exist, not a not-found answer: cannot check "
                        "the credentials there"
                    )
                answer = code or f"HTTP {status}"
                return ok(f"EBS direct at {url} answers ({answer} for no snapshot); {untested}")
        return ok(f"EBS direct at {url} answers; {untested}")

    def bucket(self) -> Verdict:
        bucket = self.settings.bucket or ""
        s3 = self.clients.s3
        with translated(self.site_id, f"reach bucket {bucket}"):
            try:
                s3.head_bucket(Bucket=bucket)
                s3.list_multipart_uploads(Bucket=bucket, MaxUploads=1)
            except boto.ClientError as exc:
                code, status = error_code(exc), http_status(exc)
                if status == 404 or code == "NoSuchBucket":
                    return fail(f"bucket {bucket} does not exist")
                if status == 403 or code in DENIED:
                    return fail(f"bucket {bucket}: access denied ({_answer(exc)})")
                if status == 301:
                    return fail(f"bucket {bucket} is in another region than {self.settings.region}")
                return fail(f"bucket {bucket}: {_answer(exc)}")
        return ok(
            f"bucket {bucket} exists and its uploads can be listed (S3 has no dry run: "
            "the first migration writes to it)"
        )

    def _dry_run(self, call: Callable[[Any], Any], *, read_only: bool = False) -> Verdict:
        """The verdict of one dry run; ``call`` gets the EC2 client."""
        with translated(self.site_id, "dry run"):
            try:
                call(self.clients.ec2)
            except boto.ClientError as exc:
                code = error_code(exc)
                if code == "DryRunOperation":
                    return ok("allowed (dry run)")
                if code in DENIED:
                    return fail(f"not allowed: {_answer(exc)}")
                if code in CREDENTIALS_REFUSED:
                    return fail(f"credentials refused: {_answer(exc)}")
                return warn(f"cannot check: the endpoint answered {_answer(exc)}, not a dry run")
            except botocore.parsers.ResponseParserError:
                return warn("cannot check: the endpoint's answer to a dry run is not EC2's")
        if read_only:
            return ok("allowed (the endpoint ignored DryRun; a read-only call)")
        return warn("cannot check: the endpoint ignored DryRun")

    def _own_resource(self) -> str:
        """A snapshot of this account, if it has one: EC2 (and moto) may check
        that a resource exists before it answers a dry run of CreateTags."""
        try:
            answer = self.clients.ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5)
        except (boto.BotoCoreError, boto.ClientError):
            return NO_SNAPSHOT
        snapshots = answer.get("Snapshots") or []
        return str(snapshots[0]["SnapshotId"]) if snapshots else NO_SNAPSHOT


def _register(settings: AwsSite) -> dict[str, Any]:
    """RegisterImage as ``amis`` calls it with this site's settings, for an
    unmarked x86_64 image and a snapshot that does not exist."""
    return {
        "Name": "migratio-doctor-probe",
        **register_arguments(None, {}, settings, NO_SNAPSHOT),
        "TagSpecifications": [{"ResourceType": "image", "Tags": [PROBE_TAG]}],
        "DryRun": True,
    }


def _answer(exc: boto.ClientError) -> str:
    code, status = error_code(exc), http_status(exc)
    message = str(exc.response.get("Error", {}).get("Message") or "")
    if "<html" in message.lower():  # an error page (emulators, proxies), not AWS's words
        message = ""
    return one_line(f"{code or 'error'} (HTTP {status}){': ' + message if message else ''}", 300)


def _aws_files() -> str:
    config = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    return f"{config} and {credentials}"
