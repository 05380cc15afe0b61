"""A local file to S3 as a resumable multipart upload.

Parts go in parallel (a few at a time: each part in flight is held in memory).
The upload id and part size are journalled through the transfer; a resumed run
lists the parts S3 holds and sends only those missing or holding other bytes
(a part's ETag is its MD5), then completes the upload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migratio.drivers.aws.errors import translated
from migratio.drivers.aws.records import StagedObjectRef
from migratio.drivers.aws.session import AwsClients
from migratio.drivers.base import MIGRATION_ID, Transfer
from migratio.errors import NotFound

log = logging.getLogger(__name__)

MIB = 1 << 20
# S3 allows 10,000 parts of at least 5 MiB (the last may be smaller).
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
# Parts are read whole into memory by the thread sending them; this bounds it.
MAX_PARALLEL_PARTS = 4


class MultipartUpload:
    """Uploads a local file to one S3 object, resuming what S3 already holds.

    clients: the site's connections (``s3``).
    workers: upper bound on parts sent at once (also capped at MAX_PARALLEL_PARTS,
        since each part in flight is held in memory).
    """

    def __init__(self, clients: AwsClients, workers: int) -> None:
        self.clients = clients
        self.site_id = clients.site_id
        self.workers = workers

    def upload(
        self,
        target: StagedObjectRef,
        path: Path,
        transfer: Transfer,
        state: dict[str, Any],
        migration_id: str,
    ) -> None:
        """Upload ``path`` to ``target`` (the rest of it, when ``state`` names an
        upload S3 still holds); ``state`` gains upload_id, part_size and uploaded."""
        size = path.stat().st_size
        held = self._uploaded_parts(target, state.get("upload_id"))
        if held is None:
            state["upload_id"] = self._create_upload(target, migration_id)
            state["part_size"] = _part_size(size)
            held = {}
            transfer.save_state(state)
        parts = _Parts(size, int(state.get("part_size") or _part_size(size)))
        upload_id = str(state["upload_id"])
        with path.open("rb") as handle:
            etags = parts.matching(handle.fileno(), held)
            todo = [number for number in parts.numbers if number not in etags]
            if todo:
                log.info(
                    "site %s: uploading %d of %d parts of %s",
                    self.site_id,
                    len(todo),
                    len(parts.numbers),
                    target.id,
                )
            etags |= self._send_parts(target, upload_id, handle.fileno(), parts, todo, transfer)
        transfer.progress(size)
        self._complete_upload(target, upload_id, etags)
        state["uploaded"] = True
        transfer.save_state(state)

    def _send_parts(
        self,
        target: StagedObjectRef,
        upload_id: str,
        fd: int,
        parts: _Parts,
        todo: list[int],
        transfer: Transfer,
    ) -> dict[int, str]:
        """Upload the parts numbered in ``todo``, a few at a time; return their ETags."""
        etags: dict[int, str] = {}
        done_bytes = parts.size - sum(parts.length(number) for number in todo)
        parallel = max(1, min(self.workers, MAX_PARALLEL_PARTS, len(todo)))
        waiting = list(reversed(todo))
        futures: dict[Future[str], int] = {}
        with ThreadPoolExecutor(parallel, thread_name_prefix="s3-part") as pool:
            try:
                while waiting or futures:
                    while waiting and len(futures) < parallel:
                        number = waiting.pop()
                        transfer.pace(parts.length(number))
                        futures[
                            pool.submit(self._put_part, target, upload_id, fd, parts, number)
                        ] = number
                    transfer.progress(done_bytes)
                    done, _ = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        number = futures.pop(future)
                        etags[number] = future.result()
                        done_bytes += parts.length(number)
            finally:
                for future in futures:
                    future.cancel()
        return etags

    def _uploaded_parts(
        self, target: StagedObjectRef, upload_id: object
    ) -> dict[int, tuple[str, int]] | None:
        """Parts S3 holds for the journalled upload; None when there is none to resume."""
        if not isinstance(upload_id, str):
            return None
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        try:
            with translated(self.site_id, f"list uploaded parts of {target.id}"):
                while True:
                    page = self.clients.s3.list_parts(
                        Bucket=target.bucket,
                        Key=target.key,
                        UploadId=upload_id,
                        PartNumberMarker=marker,
                    )
                    for part in page.get("Parts", []):
                        parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
                    if not page.get("IsTruncated"):
                        return parts
                    marker = int(page["NextPartNumberMarker"])
        except NotFound:
            return None

    def _create_upload(self, target: StagedObjectRef, migration_id: str) -> str:
        with translated(self.site_id, f"start upload of {target.id}"):
            answer = self.clients.s3.create_multipart_upload(
                Bucket=target.bucket,
                Key=target.key,
                ContentType="application/octet-stream",
                Metadata={MIGRATION_ID.replace("_", "-"): migration_id},
            )
        return str(answer["UploadId"])

    def _put_part(
        self, target: StagedObjectRef, upload_id: str, fd: int, parts: _Parts, number: int
    ) -> str:
        data = os.pread(fd, parts.length(number), parts.offset(number))
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        with translated(self.site_id, f"upload part {number} of {target.id}"):
            answer = self.clients.s3.upload_part(
                Bucket=target.bucket,
                Key=target.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                # S3 refuses a part whose bytes do not match (moto does not check).
                ContentMD5=base64.b64encode(digest).decode("ascii"),
            )
        return str(answer["ETag"])

    def _complete_upload(
        self, target: StagedObjectRef, upload_id: str, etags: dict[int, str]
    ) -> None:
        parts = [{"PartNumber": number, "ETag": etags[number]} for number in sorted(etags)]
        try:
            with translated(self.site_id, f"complete upload of {target.id}"):
                self.clients.s3.complete_multipart_upload(
                    Bucket=target.bucket,
                    Key=target.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except NotFound:
            # Completed by a run that crashed before journalling it: the object is there.
            with translated(self.site_id, f"check {target.id}"):
                self.clients.s3.head_object(Bucket=target.bucket, Key=target.key)


@dataclass(frozen=True)
class _Parts:
    """A file of ``size`` bytes cut into multipart-upload parts of ``part_size``."""

    size: int
    part_size: int

    @property
    def numbers(self) -> range:
        return range(1, max(1, -(-self.size // self.part_size)) + 1)

    def offset(self, number: int) -> int:
        return (number - 1) * self.part_size

    def length(self, number: int) -> int:
        return max(0, min(self.part_size, self.size - self.offset(number)))

    def matching(self, fd: int, held: dict[int, tuple[str, int]]) -> dict[int, str]:
        """The ETags of parts S3 already holds with exactly our bytes (ETag = MD5)."""
        etags: dict[int, str] = {}
        for number, (etag, length) in held.items():
            if number in self.numbers and length == self.length(number):
                data = os.pread(fd, length, self.offset(number))
                if etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest():
                    etags[number] = etag
        return etags


def _part_size(size: int) -> int:
    wanted = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-wanted // MIB) * MIB)
