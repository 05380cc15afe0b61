"""``/metrics`` of a real daemon, scraped while it migrates a 256 MiB image from
site-a to site-b of the test bed, and read with prometheus_client's own parser."""

from __future__ import annotations

import itertools
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection
from prometheus_client.parser import text_string_to_metric_families

from migratio.machine import State
from tests.support import glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config

pytestmark = pytest.mark.testbed

SIZE_MIB = 256
PASSED = ("queued", "exporting", "converting", "uploading", "registering")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _migratio_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("migratio_"))


SITES = {"source_site": "site-a", "dest_site": "site-b"}


def test_metrics_are_served_during_a_real_migration(
    testbed: Any, site_a: Connection, tmp_path: Path
) -> None:
    port = _free_port()
    config = write_daemon_config(
        tmp_path,
        testbed.dir / "sites",
        metrics_listen=f"127.0.0.1:{port}",
    )
    source_file = images.random_raw(tmp_path / "random256.raw", SIZE_MIB)
    size = source_file.stat().st_size
    source_id = glance_peer.upload(site_a, source_file, name="metrics-256", disk_format="raw")
    migration_id = migratio_cli.submit(config, source_id)

    daemon, ledger = migratio_cli.start_and_wait(
        config, migration_id, tmp_path / "daemon.log", state="uploading", min_bytes=8 * images.MIB
    )
    try:
        # The first scrape takes a fresh census: the state gauge is the ledger's now.
        before = ledger.get(migration_id).state
        text, during = _scrape(port)
        after = ledger.get(migration_id).state
        (tmp_path / "scrape-uploading.txt").write_text(text)
        print(f"\n--- /metrics while {before}:\n{_migratio_lines(text)}")

        for old, new in itertools.pairwise(PASSED[:4]):
            assert _value(during, "migratio_transitions_total", from_state=old, to_state=new) == 1
            assert _value(during, "migratio_state_seconds_count", state=old) == 1
            assert _value(during, "migratio_state_seconds_bucket", state=old, le="+Inf") == 1
            buckets = [
                value
                for (name, labels), value in during.items()
                if name == "migratio_state_seconds_bucket" and ("state", old) in labels
            ]
            assert len(buckets) == 17 and sorted(buckets) == buckets  # cumulative
        sent = _value(during, "migratio_bytes_sent_total", **SITES) or 0
        assert 0 < sent <= size
        now = {before, after}
        assert before in ("uploading", "registering")
        for state in State:
            gauge = _value(during, "migratio_migrations", state=state.value, **SITES)
            assert gauge == (1 if state.value in now else 0) or (len(now) == 2 and gauge in (0, 1))
        assert _value(during, "migratio_feedback_backlog") is not None
        assert _value(during, "migratio_lease_takeovers_total") == 0
        assert _value(during, "migratio_intake_jobs_total", outcome="created") == 0
        assert _value(during, "migratio_ledger_errors_total", kind="unavailable") == 0
        assert [key for key in during if key[0] == "migratio_build_info"]

        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=300)
        deadline = time.monotonic() + 15  # the census is cached for 5 s
        while True:
            text, done = _scrape(port)
            if _value(done, "migratio_migrations", state="done", **SITES) == 1:
                break
            assert time.monotonic() < deadline, _migratio_lines(text)
            time.sleep(0.5)
        print(f"\n--- /metrics once done:\n{_migratio_lines(text)}")
        assert _value(done, "migratio_bytes_sent_total", **SITES) == size
        assert _value(done, "migratio_migrations", state="uploading", **SITES) == 0
        for old in PASSED:
            assert _value(done, "migratio_state_seconds_count", state=old) == 1
        registered = _value(
            done, "migratio_transitions_total", from_state="registering", to_state="done"
        )
        assert registered == 1
        assert _value(done, "migratio_failures_total", error_class="transient") == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    with pytest.raises(OSError):
        _scrape(port)  # the endpoint stopped with the daemon


def test_a_metrics_port_in_use_stops_the_daemon_naming_the_key(
    testbed: Any, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_daemon_config(
            tmp_path,
            testbed.dir / "sites",
            metrics_listen=f"127.0.0.1:{port}",
            intake=False,
            feedback=False,
        )
        result = migratio_cli.cli(config, "run", "--until-idle", check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"metrics_listen: cannot listen on 127.0.0.1:{port}" in result.stderr
