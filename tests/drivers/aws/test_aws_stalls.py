"""The bed's moto behind a freezing proxy (the site's ``endpoint_url``): an EBS direct
upload whose connection goes silent mid-stream, or whose answers never come, is
aborted by the stall watchdog within stall_seconds as a transient error, and the
resumed upload completes the same snapshot with the right bytes. Socket
timeouts are 60 s, so only the watchdog can be what noticed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migratio import stall
from migratio.config import AwsSite
from migratio.drivers.aws.blocks import BLOCK_SIZE
from migratio.drivers.aws.driver import AwsSiteDriver
from migratio.drivers.base import RecordSpec, RecordStatus
from tests.support import aws_peer
from tests.support.freezing_proxy import DOWN, UP, FreezingProxy
from tests.support.payloads import Payload
from tests.support.stalls import STALL_SECONDS, Watched, expect_stall

pytestmark = [pytest.mark.testbed, pytest.mark.reliability]

BLOCKS = 96


@pytest.fixture
def proxy(testbed: Any) -> Iterator[FreezingProxy]:
    moto = urllib.parse.urlsplit(str(testbed.env["MIGRATIO_MOTO_URL"]))
    assert moto.hostname and moto.port
    with FreezingProxy(moto.hostname, moto.port) as running:
        yield running


@pytest.fixture
def driver(proxy: FreezingProxy) -> Iterator[AwsSiteDriver]:
    settings = AwsSite.model_validate(
        {
            "type": "aws",
            "region": aws_peer.REGION,
            "endpoint_url": proxy.url,
            "profile": "migratio-testbed",
            "workers": 4,
            "timeout": 60,
        }
    )
    site = AwsSiteDriver("aws-x", settings)
    yield site
    site.close()


def _disk(path: Path) -> Path:
    """BLOCKS blocks, every other one holding data."""
    with path.open("wb") as handle:
        handle.truncate(BLOCKS * BLOCK_SIZE)
        for index in range(0, BLOCKS, 2):
            os.pwrite(handle.fileno(), os.urandom(BLOCK_SIZE), index * BLOCK_SIZE)
    return path


# After the cut, the blocks in flight are retried by botocore (request_attempts 3,
# backoff up to 1 + 2 s), each cut again, before the writer lets the error out.
AWS_MARGIN_SECONDS = 8.0


@pytest.mark.parametrize(
    ("freeze", "peer"),
    [
        ((UP, DOWN), "moto silent from mid-PutSnapshotBlock on"),
        ((DOWN,), "moto takes every block, answers none"),
    ],
    ids=["mid-stream", "no-answer"],
)
def test_a_frozen_block_upload_is_aborted_and_resumed(
    driver: AwsSiteDriver,
    proxy: FreezingProxy,
    testbed: Any,
    tmp_path: Path,
    freeze: tuple[str, ...],
    peer: str,
) -> None:
    disk = _disk(tmp_path / "disk.raw")
    digest = hashlib.sha512(disk.read_bytes()).hexdigest()
    size = disk.stat().st_size
    record = driver.create_record(RecordSpec(str(uuid.uuid4()), "stall", "raw", "bare", size))
    try:
        watchdog = stall.Watchdog(STALL_SECONDS, "ebs upload", [driver])
        first = Watched(watchdog, path=disk, sha512=digest, size=size)
        proxy.freeze_when(4 * BLOCK_SIZE + 1000, freeze=freeze, everything=True)

        expect_stall(
            peer,
            proxy,
            watchdog,
            lambda: driver.receive(record.id, first),
            lambda: first.last_moved,
            margin=AWS_MARGIN_SECONDS,
        )

        proxy.thaw()
        resumed = Payload(path=disk, sha512=digest, size=size)
        resumed.state = first.state
        assert driver.receive(record.id, resumed) == digest
        assert resumed.state["snapshot_id"] == record.id
        finished = driver.get_record(record.id)
        assert finished is not None and finished.status is RecordStatus.COMPLETE
        ebs = aws_peer.client("ebs", str(testbed.env["MIGRATIO_MOTO_URL"]))
        rebuilt = tmp_path / "rebuilt.raw"
        assert aws_peer.rebuild_disk(ebs, record.id, rebuilt, size) == BLOCKS // 2
        assert aws_peer.same_bytes(disk, rebuilt)
    finally:
        driver.remove(record.id)


def test_one_withheld_answer_is_cut_and_retried_by_botocore_within_the_attempt(
    driver: AwsSiteDriver, proxy: FreezingProxy, tmp_path: Path
) -> None:
    """Only one connection goes silent: once the watchdog cuts it, botocore sends
    that block again on a fresh connection and the upload completes in the same
    attempt (nothing to retry: what the writer returns was verified by it)."""
    disk = _disk(tmp_path / "disk.raw")
    digest = hashlib.sha512(disk.read_bytes()).hexdigest()
    size = disk.stat().st_size
    record = driver.create_record(RecordSpec(str(uuid.uuid4()), "stall", "raw", "bare", size))
    try:
        watchdog = stall.Watchdog(STALL_SECONDS, "ebs upload", [driver])
        transfer = Watched(watchdog, path=disk, sha512=digest, size=size)
        proxy.freeze_when(4 * BLOCK_SIZE + 1000, freeze=(DOWN,))
        with watchdog.watching():
            assert driver.receive(record.id, transfer) == digest
        assert watchdog.fired_after is not None
        print(
            f"\nSTALL moto, one PutSnapshotBlock answer withheld: cut after "
            f"{watchdog.fired_after:.2f} s without progress; botocore resent it, upload complete"
        )
        assert STALL_SECONDS <= watchdog.fired_after < STALL_SECONDS + 1
    finally:
        driver.remove(record.id)
