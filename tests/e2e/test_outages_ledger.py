"""R3: the ledger's PostgreSQL restarted mid-run. The daemon keeps its leases and
progress there, so for the outage it can neither record progress nor renew its
lease: the migration must end ``done`` once the server is back, with one image,
executed by the same daemon process, which never exits.

The server is a private cluster this test starts and restarts itself
(testbed_lib.start_postgres / stop_postgres(keep=True)), never the machine's.
Outage length: ``MIGRATIO_OUTAGE_SECONDS`` (tests/support/outages.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import testbed_lib
from openstack.connection import Connection

from tests.support import glance_peer, images, migratio_cli, outages
from tests.support.daemon_config import write_daemon_config
from tests.support.reliability import record

pytestmark = [pytest.mark.testbed, pytest.mark.postgres, pytest.mark.reliability]


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A PostgreSQL cluster of this test only: (its directory, its URL)."""
    directory = tmp_path / "pg"
    url = testbed_lib.start_postgres(directory)
    yield directory, url
    testbed_lib.stop_postgres(directory)


def test_postgres_restarted_mid_upload_ends_done_with_one_image(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    site_a: Connection,
    site_b: Connection,
    private_postgres: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATIO_FAULTS", outages.THROTTLE)
    pg_dir, url = private_postgres
    seconds = outages.outage_seconds()
    # A lease shorter than the outage: the daemon's own lease expires while the
    # ledger is away, and it must take its migration back, not lose it.
    config = write_daemon_config(
        tmp_path,
        testbed.dir / "sites",
        database_url=url,
        lease_seconds=min(6.0, max(2.0, seconds / 2)),
        retry=outages.outlasting(seconds),
    )
    source_file = images.random_qcow2(tmp_path / "source.qcow2", 40)
    source_id = glance_peer.upload(site_a, source_file, name="postgres-outage")
    migration_id = migratio_cli.submit(config, source_id)
    daemon, ledger = migratio_cli.start_and_wait(
        config, migration_id, tmp_path / "migratio.log", state="uploading", min_bytes=4 * images.MIB
    )
    try:
        outage = outages.take_down(
            lambda: testbed_lib.stop_postgres(pg_dir, keep=True),
            lambda: testbed_lib.start_postgres(pg_dir),
            seconds,
        )
        assert outages.still_running(daemon), "the daemon exited while its ledger was down"
        recover = outages.recovery_seconds(ledger, migration_id, outage.returned_at)
        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=300)
        assert outages.still_running(daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0

    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done" and shown["error"] is None
    tagged = glance_peer.find(site_b, migratio_migration_id=migration_id)
    assert [image["id"] for image in tagged] == [shown["dest_image_id"]]
    assert tagged[0]["status"] == "active"
    assert tagged[0]["os_hash_value"] == images.sha512_of(source_file)
    assert all(artifact["status"] != "present" for artifact in shown["artifacts"])
    work = tmp_path / "work"
    assert [p for p in work.rglob("*") if p.is_file()] == []
    record(
        "R3", "PostgreSQL ledger (restarted mid-upload)", outcome="done",
        outage_s=round(outage.down_for, 1), recover_s=round(recover, 2), images=1, leaked=0,
        daemon_restarts=0,
    )  # fmt: skip
