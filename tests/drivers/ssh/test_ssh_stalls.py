"""The bed's sshd behind a freezing proxy (the site's ``port``): an SFTP upload whose
connection goes silent mid-stream is aborted by the stall watchdog within
stall_seconds as a transient error, and the retry, on a fresh connection, resumes
after the last block the host holds and stages the right bytes. Channel
timeouts are 60 s, so only the watchdog can be what noticed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from migratio import stall
from migratio.config import OpenStackSshSite
from migratio.drivers.base import RecordSpec
from migratio.drivers.ssh.driver import OpenStackSshSiteDriver
from migratio.drivers.ssh.hashes import BLOCK_SIZE, STATE_KEY
from tests.support.freezing_proxy import FreezingProxy
from tests.support.payloads import Payload
from tests.support.stalls import STALL_SECONDS, Watched, expect_stall

pytestmark = [pytest.mark.testbed, pytest.mark.reliability]


@pytest.fixture
def proxy(testbed: Any) -> Iterator[FreezingProxy]:
    site = yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())
    with FreezingProxy(site["host"], int(site["port"])) as running:
        yield running


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def driver(
    testbed: Any, proxy: FreezingProxy, staging: Path, tmp_path: Path
) -> Iterator[OpenStackSshSiteDriver]:
    raw = yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())
    # The proxy's port is another address for known_hosts: the bed's host key,
    # recorded for it on first sight (a copy, so the bed's file stays as it is).
    known_hosts = tmp_path / "known_hosts"
    shutil.copy(raw["known_hosts"], known_hosts)
    raw.update(
        port=proxy.port,
        known_hosts=str(known_hosts),
        accept_unknown_host_key=True,
        staging_dir=str(staging),
        timeout=60,
    )
    site = OpenStackSshSiteDriver("site-b-ssh", OpenStackSshSite.model_validate(raw))
    yield site
    site.close()


def test_an_sftp_upload_frozen_mid_stream_is_aborted_and_resumed(
    driver: OpenStackSshSiteDriver, proxy: FreezingProxy, staging: Path, tmp_path: Path
) -> None:
    source = tmp_path / "payload"
    source.write_bytes(os.urandom(6 * BLOCK_SIZE + 4321))
    digest = hashlib.sha512(source.read_bytes()).hexdigest()
    size = source.stat().st_size
    migration_id = str(uuid.uuid4())
    record = driver.create_record(RecordSpec(migration_id, "stall", "raw", "bare"))
    try:
        watchdog = stall.Watchdog(STALL_SECONDS, "sftp upload", [driver])
        first = Watched(watchdog, path=source, sha512=digest, size=size)
        proxy.freeze_when(3 * BLOCK_SIZE + 1000, everything=True)

        expect_stall(
            "sshd silent mid-SFTP-upload",
            proxy,
            watchdog,
            lambda: driver.receive(record.id, first),
            lambda: first.last_moved,
        )
        assert len(first.state[STATE_KEY]["blocks"]) >= 1

        proxy.thaw()
        resumed = Payload(path=source, sha512=digest, size=size)
        resumed.state = first.state
        assert driver.receive(record.id, resumed) == digest
        attempts = resumed.state[STATE_KEY]["attempts"]
        assert attempts[0] == 0 and attempts[-1] > 0  # resumed, not started over
        assert hashlib.sha512((staging / f"{migration_id}.{digest}").read_bytes()).hexdigest() == (
            digest
        )
    finally:
        driver.remove(record.id)
