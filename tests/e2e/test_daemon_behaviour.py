"""Supervisor behaviour against real peers: retries, a shared PostgreSQL ledger, scale-out."""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import testbed_lib
import yaml
from openstack.connection import Connection

from migratio import operations
from migratio.config import load_settings
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.ledgers import empty_ledger_engine

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def small_source(site_a: Connection, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = images.random_qcow2(tmp_path_factory.mktemp("img") / "small.qcow2", 4)
    return glance_peer.upload(site_a, path, name="small-template")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_log(log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} never appeared in {log}")


def test_unreachable_destination_is_retried_then_failed(
    testbed: testbed_lib.Bed, tmp_path: Path, small_source: str
) -> None:
    bed_dir = testbed.dir
    sites = tmp_path / "sites"
    shutil.copytree(bed_dir / "sites", sites)
    (sites / "dead.yml").write_text("type: openstack\ncloud: dead\n")
    clouds = yaml.safe_load((bed_dir / "clouds.yaml").read_text())
    clouds["clouds"]["dead"] = {
        **clouds["clouds"]["site-b"],
        "auth": {
            **clouds["clouds"]["site-b"]["auth"],
            "auth_url": f"http://127.0.0.1:{_closed_port()}/v3",
        },
    }
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(clouds))
    env = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    config = write_daemon_config(tmp_path, sites)

    migration_id = migratio_cli.submit(config, small_source, dest="dead")
    migratio_cli.run_until_idle(config, env=env)
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed"
    assert shown["error"].startswith("gave up after 3 attempts: ")
    retries = [row for row in shown["history"] if row["from"] == row["to"] == "exporting"]
    assert [row["message"].split(",")[0] for row in retries] == [
        "attempt 1 failed",
        "attempt 2 failed",
    ]
    assert [row["to"] for row in shown["history"]][-1] == "failed"


def test_two_daemons_share_a_postgresql_ledger(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    postgres_url: str,
    site_a: Connection,
    site_b: Connection,
) -> None:
    empty_ledger_engine(postgres_url).dispose()
    bed_dir = testbed.dir
    sources = [
        glance_peer.upload(
            site_a, images.random_qcow2(tmp_path / f"pg{n}.qcow2", 24), name=f"pg-{n}"
        )
        for n in range(6)
    ]
    hosts = [tmp_path / f"host{n}" for n in range(2)]
    for host in hosts:
        host.mkdir()
    configs = [
        write_daemon_config(host, bed_dir / "sites", database_url=postgres_url, concurrency=1)
        for host in hosts
    ]
    runners = [migratio_cli.start(config, config.parent / "migratio_cli.log") for config in configs]
    try:
        for config in configs:
            _wait_for_log(config.parent / "migratio_cli.log", "starting")
        # Submitted in-process, all at once, so both daemons find work waiting.
        ledger = migratio_cli.ledger_of(configs[0])
        settings = load_settings(configs[0])
        ids = [operations.submit(settings, ledger, s, "site-a", "site-b").id for s in sources]
        for migration_id in ids:
            migratio_cli.wait_for(ledger, migration_id, state="done", timeout=300)
    finally:
        for runner in runners:
            runner.send_signal(signal.SIGTERM)
    assert [runner.wait(60) for runner in runners] == [0, 0]

    hosts_seen = set()
    for migration_id, source in zip(ids, sources, strict=True):
        shown = migratio_cli.show(configs[1], migration_id)
        assert shown["state"] == "done", shown["error"]
        starts = [row for row in shown["history"] if row["to"] == "exporting"]
        assert len(starts) == 1
        hosts_seen.add(starts[0]["pid"])
        assert [c["id"] for c in glance_peer.find(site_b, source_uuid=source)] == [
            shown["dest_image_id"]
        ]
    assert len(ledger.migrations()) == len(sources)
    assert len(hosts_seen) == 2, "both daemons should have taken work"
