"""What the AWS driver tests against moto share: a driver with given settings
behind the tests' front, a small sparse disk, and a recording tracker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from migratio.config import AwsSite
from migratio.drivers.aws.blocks import BLOCK_SIZE
from migratio.drivers.aws.driver import AwsSiteDriver
from migratio.drivers.base import DestinationImage, RecordSpec, Registration
from migratio.errors import CancelRequested
from tests.support import aws_peer
from tests.support.aws_transfer import FileTransfer
from tests.support.moto_front import MotoFront


def site_driver(front: MotoFront, **settings: Any) -> AwsSiteDriver:
    """A driver of an AWS site reached through ``front``, with ``settings``."""
    site = AwsSite.model_validate(
        {
            "type": "aws",
            "region": aws_peer.REGION,
            "endpoint_url": front.url,
            "profile": "migratio-testbed",
            "workers": 4,
            **settings,
        }
    )
    return AwsSiteDriver("aws-t", site)


def six_block_disk(path: Path) -> Path:
    """Six blocks: data in blocks 0 and 2, allocated zeros in 3, holes in 1, 4
    and most of 5, data at the very end (block 5, partial)."""
    size = 5 * BLOCK_SIZE + 4321
    with path.open("wb") as handle:
        handle.truncate(size)
        os.pwrite(handle.fileno(), os.urandom(100), 0)
        os.pwrite(handle.fileno(), os.urandom(100), 2 * BLOCK_SIZE + 5)
        os.pwrite(handle.fileno(), bytes(BLOCK_SIZE), 3 * BLOCK_SIZE)
        os.pwrite(handle.fileno(), os.urandom(21), size - 21)
    return path


def registered_ami(driver: AwsSiteDriver, disk: Path) -> tuple[str, DestinationImage]:
    """(snapshot id, AMI) of ``disk`` sent and registered as a new migration."""
    migration_id = str(uuid.uuid4())
    record = driver.create_record(
        RecordSpec(migration_id, "shared", "raw", "bare", disk.stat().st_size)
    )
    driver.receive(record.id, FileTransfer(disk))
    registration = Registration(
        name="shared",
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        architecture="x86_64",
        properties={"source_uuid": str(uuid.uuid4()), "source_t": "site-a"},
    )
    return record.id, driver.register(record.id, registration)


class RecordingTracker:
    """Records what the driver announces, as the registering state's tracker
    does; ``cancel_after`` checkpoints, it stops the driver as a cancel would."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.artifacts: list[tuple[str, str]] = []
        self.checkpoints = 0
        self.cancel_after = cancel_after

    def add_artifact(self, kind: str, ref: str) -> None:
        self.artifacts.append((kind, ref))

    def checkpoint(self) -> None:
        self.checkpoints += 1
        if self.cancel_after is not None and self.checkpoints > self.cancel_after:
            raise CancelRequested("cancelled by operator")
