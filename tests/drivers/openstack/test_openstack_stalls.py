"""A real Glance behind a freezing proxy (``image_endpoint_override``): transfers that
go silent mid-stream, or whose answer never comes, are aborted by the stall
watchdog within stall_seconds, as a transient error, and a retry on a fresh
connection gets the right bytes there. Socket timeouts are left at 60 s, so only
the watchdog can be what noticed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from migratio import stall
from migratio.drivers.base import DestinationImage, RecordSpec, RecordStatus
from migratio.drivers.openstack.driver import OpenStackSiteDriver
from tests.drivers.openstack.test_openstack_driver import _chunks, _cloud_variant, _settings
from tests.support.freezing_proxy import DOWN, FreezingProxy
from tests.support.payloads import Payload
from tests.support.stalls import STALL_SECONDS, Watched, expect_stall

pytestmark = [pytest.mark.testbed, pytest.mark.reliability]

MiB = 1024 * 1024


@pytest.fixture
def proxied(
    testbed: Any, proxy: FreezingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OpenStackSiteDriver]:
    """site-a's Glance, reached through the proxy; socket timeouts 60 s."""
    cloud = _cloud_variant(testbed, tmp_path, monkeypatch, image_endpoint_override=proxy.url)
    driver = OpenStackSiteDriver("site-x", _settings(cloud, timeout=60))
    yield driver
    driver.close()


@pytest.fixture
def direct(testbed: Any) -> Iterator[OpenStackSiteDriver]:
    driver = OpenStackSiteDriver("site-a", _settings("site-a"))
    yield driver
    driver.close()


@contextmanager
def _record(driver: OpenStackSiteDriver) -> Iterator[list[str]]:
    """Records the test makes (the first one, then any retry makes), removed at the end."""
    made: list[str] = []
    try:
        yield made
    finally:
        for record_id in made:
            driver.remove(record_id)


def _new_record(driver: OpenStackSiteDriver, made: list[str]) -> DestinationImage:
    record = driver.create_record(
        RecordSpec(str(uuid.uuid4()), "migratio stall test", "raw", "bare")
    )
    made.append(record.id)
    return record


def _retry_upload(
    driver: OpenStackSiteDriver, record_id: str, data: bytes, made: list[str]
) -> DestinationImage:
    """What the uploading state does on its next attempt: a record that already
    holds the payload is kept; an open one is sent to again; a broken one (Glance
    still "saving" the interrupted upload) is replaced."""
    record = driver.get_record(record_id)
    assert record is not None
    if record.status is RecordStatus.BROKEN:
        driver.remove(record_id)
        record = _new_record(driver, made)
    if record.status is RecordStatus.OPEN:
        driver.receive(record.id, Payload(_chunks(data, MiB)))
    done = driver.get_record(record.id)
    assert done is not None
    return done


def test_an_upload_frozen_mid_stream_is_aborted_and_retried(
    proxied: OpenStackSiteDriver, proxy: FreezingProxy, direct: OpenStackSiteDriver
) -> None:
    data = os.urandom(24 * MiB)
    with _record(direct) as made:
        record = _new_record(proxied, made)
        watchdog = stall.Watchdog(STALL_SECONDS, "glance upload", [proxied])
        transfer = Watched(watchdog, chunks=_chunks(data, MiB))
        proxy.freeze_when(4 * MiB)

        expect_stall(
            "glance upload frozen mid-stream",
            proxy,
            watchdog,
            lambda: proxied.receive(record.id, transfer),
            lambda: transfer.last_moved,
        )
        assert proxy.moved("up") < len(data)

        proxy.thaw()
        done = _retry_upload(proxied, record.id, data, made)
    assert done.status is RecordStatus.COMPLETE
    assert done.sha512 == hashlib.sha512(data).hexdigest()


def test_an_upload_whose_answer_never_comes_is_aborted(
    proxied: OpenStackSiteDriver, proxy: FreezingProxy, direct: OpenStackSiteDriver
) -> None:
    """Glance takes every byte; its answer is held by the proxy."""
    data = os.urandom(8 * MiB)
    with _record(direct) as made:
        record = _new_record(proxied, made)
        watchdog = stall.Watchdog(STALL_SECONDS, "glance upload", [proxied])
        transfer = Watched(watchdog, chunks=_chunks(data, MiB))
        proxy.freeze_when(MiB, freeze=(DOWN,))

        expect_stall(
            "glance upload, answer withheld",
            proxy,
            watchdog,
            lambda: proxied.receive(record.id, transfer),
            lambda: transfer.last_moved,
        )
        assert proxy.moved("up") > len(data)

        proxy.thaw()
        # The next attempt finds the record complete with the bytes sent.
        done = _retry_upload(proxied, record.id, data, made)
    assert done.status is RecordStatus.COMPLETE
    assert done.sha512 == hashlib.sha512(data).hexdigest()


def test_a_download_frozen_mid_stream_is_aborted_and_read_again(
    proxied: OpenStackSiteDriver, proxy: FreezingProxy, direct: OpenStackSiteDriver
) -> None:
    data = os.urandom(24 * MiB)
    with _record(direct) as made:
        record = _new_record(direct, made)
        direct.receive(record.id, Payload(_chunks(data, MiB)))
        watchdog = stall.Watchdog(STALL_SECONDS, "glance download", [proxied])
        got = Watched(watchdog)
        received = bytearray()

        def download() -> None:
            with proxied.read(record.id) as chunks:
                for chunk in chunks:
                    received.extend(chunk)
                    got.progress(len(received))

        proxy.freeze_when(4 * MiB, counting=DOWN)
        expect_stall(
            "glance download frozen mid-stream", proxy, watchdog, download, lambda: got.last_moved
        )
        assert 0 < len(received) < len(data)

        proxy.thaw()
        with proxied.read(record.id) as chunks:
            again = b"".join(chunks)
    assert hashlib.sha512(again).digest() == hashlib.sha512(data).digest()
