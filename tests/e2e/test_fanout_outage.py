"""Fan-out with one destination's Glance stopped mid-run: site-b's Glance goes
down while site-b's member streams the group's read; aws-a's member reaches
``done`` while it is down; site-b's member retries and ends ``done`` once its
Glance is back, both holding the image (checked by checksum), the source read
once (site-b's retry reads the group's spool, not site-a)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import testbed_lib
from openstack.connection import Connection

from migratio import operations
from migratio.config import load_settings
from tests.support import aws_peer, glance_peer, images, migratio_cli, outages
from tests.support.daemon_config import write_daemon_config

pytestmark = [pytest.mark.testbed, pytest.mark.reliability]

SIZE_MIB = 12


def test_one_destination_glance_down_the_others_finish_and_it_catches_up(
    testbed: testbed_lib.Bed,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATIO_FAULTS", outages.THROTTLE)  # ~20 MiB/s: stopped mid-way
    config = write_daemon_config(
        tmp_path, testbed.dir / "sites", concurrency=2, retry=outages.outlasting(30)
    )
    source_file = images.random_qcow2(tmp_path / "fanout-outage.qcow2", SIZE_MIB)
    raw_file = images.as_raw(source_file, tmp_path / "fanout-outage.raw")
    source_id = glance_peer.upload(site_a, source_file, name="fan-out outage")
    ledger = migratio_cli.ledger_of(config)
    members = operations.submit_group(
        load_settings(config), ledger, source_id, "site-a", ("site-b", "aws-a")
    )
    by_site = {m.dest_site: m.id for m in members}
    daemon, _ = migratio_cli.start_and_wait(
        config, by_site["site-b"], tmp_path / "migratio.log", state="uploading",
        min_bytes=2 * images.MIB,
    )  # fmt: skip
    try:
        testbed_lib.stop_service(testbed.dir, "glance-site-b")
        try:
            outages.wait(
                lambda: ledger.get(by_site["aws-a"]).state in ("done", "failed"),
                120,
                "aws-a's member to end while site-b's Glance is down",
            )
            while_down = ledger.get(by_site["site-b"])
        finally:
            testbed_lib.start_service(testbed.dir, "glance-site-b")
        migratio_cli.wait_for(ledger, by_site["site-b"], state="done", timeout=120)
        assert outages.still_running(daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0

    aws = ledger.get(by_site["aws-a"])
    assert aws.state == "done", aws.last_error
    assert while_down.state != "done"
    site_b_trail = [r.message for r in ledger.history(by_site["site-b"])]
    assert any("failed, retrying" in message for message in site_b_trail), site_b_trail
    done_b = ledger.get(by_site["site-b"])
    assert glance_peer.sha512_of_image(site_b, str(done_b.dest_image_id)) == images.sha512_of(
        source_file
    )
    ec2 = aws_peer.client("ec2", str(testbed.env["MIGRATIO_MOTO_URL"]))
    (snapshot,) = aws_peer.snapshots_of(ec2, aws.id)
    ebs = aws_peer.client("ebs", str(testbed.env["MIGRATIO_MOTO_URL"]))
    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(ebs, snapshot["SnapshotId"], rebuilt, raw_file.stat().st_size)
    assert aws_peer.same_bytes(rebuilt, raw_file)
    assert not any((tmp_path / "work" / "groups").glob("*")), "the group's files stayed"
