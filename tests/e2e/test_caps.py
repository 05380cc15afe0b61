"""Caps against the real bed: a site's bandwidth cap shared by two migrations to
it, and ``max_concurrent`` kept by two daemons sharing a PostgreSQL ledger.

Small sizes (CI); bench/caps.py gives the issue's figure (40 MiB/s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import testbed_lib
from openstack.connection import Connection

from migratio.ledger.database import upgrade
from migratio.ledger.store import Ledger
from tests.support import caps_run, glance_peer, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.ledgers import empty_ledger_engine

pytestmark = pytest.mark.testbed

CAP_MIB_PER_S = 8
IMAGE_MIB = 16  # two of them: about 4 s at the cap


def test_two_migrations_to_a_capped_site_share_its_cap(
    testbed: testbed_lib.Bed, site_a: Connection, site_b: Connection, tmp_path: Path
) -> None:
    sites = caps_run.capped_sites(
        testbed.dir / "sites", tmp_path / "sites", "site-b", max_mib_per_s=CAP_MIB_PER_S
    )
    config = write_daemon_config(tmp_path, sites, concurrency=2, intake=False, feedback=False)
    sources = caps_run.raw_sources(site_a, tmp_path, [IMAGE_MIB, IMAGE_MIB])
    ledger = migratio_cli.ledger_of(config)
    ids = [ledger.create("site-a", "site-b", image_id).id for image_id in sources]

    samples = caps_run.run_daemons([config], ledger, ids, timeout=120)

    for migration_id, sha512 in zip(ids, sources.values(), strict=True):
        migration = ledger.get(migration_id)
        assert migration.state == "done", migration.last_error
        assert glance_peer.sha512_of_image(site_b, str(migration.dest_image_id)) == sha512
    rate = caps_run.upload_rate(ledger, ids, samples)
    mib = rate.bytes / caps_run.MIB
    print(f"caps: {mib:.1f} MiB in {rate.seconds:.2f} s: {rate.mib_per_s:.2f} MiB/s")
    assert rate.overlap_seconds > rate.seconds / 2  # the two shared the cap, not took turns
    assert rate.mib_per_s == pytest.approx(CAP_MIB_PER_S, rel=0.10)


@pytest.mark.postgres
def test_max_concurrent_holds_across_two_daemons_on_postgresql(
    testbed: testbed_lib.Bed, site_a: Connection, postgres_url: str, tmp_path: Path
) -> None:
    engine = empty_ledger_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    sites = caps_run.capped_sites(
        testbed.dir / "sites", tmp_path / "sites", "site-b", max_concurrent=1
    )
    configs = []
    for name in ("daemon-1", "daemon-2"):
        directory = tmp_path / name
        directory.mkdir()
        configs.append(
            write_daemon_config(
                directory,
                sites,
                database_url=postgres_url,
                concurrency=3,  # room for all three: only the limit holds them back
                poll_seconds=0.1,
                intake=False,
                feedback=False,
            )
        )
    sources = caps_run.raw_sources(site_a, tmp_path, [1, 1, 1])
    ledger = Ledger.open(postgres_url, migrate=False)
    ids = [ledger.create("site-a", "site-b", image_id).id for image_id in sources]
    caps_run.run_daemons(configs, ledger, ids, timeout=120)
    assert [ledger.get(i).state for i in ids] == ["done"] * len(ids)
    seen = caps_run.concurrency(ledger, ids)
    print(f"caps: two daemons, max_concurrent 1: {seen}")
    assert seen.most_running == 1
    assert seen.waiting_notes >= len(ids) - 1
    ledger.close()
