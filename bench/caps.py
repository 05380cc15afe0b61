"""Benchmark: bandwidth caps and max_concurrent against the real test bed (issue 13, "Caps").

- rate: two migrations of ``--size-mib`` each from Glance site-a to site-b at
  once, site-b capped at ``--cap-mib`` MiB/s (``max_mib_per_s``); the aggregate
  rate over the transfer, from the migrations' progress in the ledger sampled
  every 50 ms (first sample with bytes sent to the first with all sent); goal:
  within ±10 % of the cap. The same two without a cap first, in the same run:
  what the path does on this machine now (a cap above it cannot be reached).
  Every copy is checked by sha512 against its source.
- slots: site-b with ``max_concurrent: 1``, three migrations queued to it, one
  daemon with ``concurrency: 3`` (SQLite ledger), then two daemons sharing a
  PostgreSQL ledger (``--postgres-url`` or $MIGRATIO_TEST_POSTGRES_URL; skipped
  without one): the most migrations running at once by the ledger's audit rows
  in commit order (goal: 1), the "waiting for a free slot" notes, and how many
  daemons took a migration.

    python3 bench/caps.py [--cap-mib 40] [--size-mib 400] [--tiny]

Uses $MIGRATIO_TESTBED_DIR when it points at a running bed, else starts (and
stops) one. The PostgreSQL database's ledger tables are dropped and made anew.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402
from openstack.connection import Connection  # noqa: E402

from bench.rounds import emit  # noqa: E402
from migratio.ledger.database import upgrade  # noqa: E402
from migratio.ledger.store import Ledger  # noqa: E402
from tests.support import caps_run, glance_peer, migratio_cli  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.ledgers import empty_ledger_engine  # noqa: E402

QUIET = {"intake": False, "feedback": False, "log_level": "INFO"}


def rate(bed: testbed_lib.Bed, scratch: Path, cap: float, size_mib: int) -> dict[str, Any]:
    """The same two images migrated twice: without a cap (what this machine's
    path does now, the baseline) and with site-b capped at ``cap``."""
    site_a, site_b = glance_peer.connect("site-a"), glance_peer.connect("site-b")
    sources = caps_run.raw_sources(site_a, scratch, [size_mib, size_mib])
    try:
        uncapped = _two_at_once(bed, scratch / "uncapped", sources, site_b, {})
        capped = _two_at_once(bed, scratch / "capped", sources, site_b, {"max_mib_per_s": cap})
    finally:
        for source_id in sources:
            glance_peer.delete(site_a, source_id)
    return {
        "cap_mib_per_s": cap,
        "migrations": 2,
        "size_mib": size_mib,
        "bytes_measured": capped["bytes"],
        "seconds": capped["seconds"],
        "aggregate_mib_per_s": capped["mib_per_s"],
        "error_pct": (capped["mib_per_s"] / cap - 1) * 100,
        "both_uploading_s": capped["overlap_s"],
        "uncapped_mib_per_s": uncapped["mib_per_s"],
        "sha512_verified": capped["verified"] + uncapped["verified"],
    }


def _two_at_once(
    bed: testbed_lib.Bed,
    work: Path,
    sources: dict[str, str],
    site_b: Connection,
    caps: dict[str, Any],
) -> dict[str, Any]:
    work.mkdir()
    sites = caps_run.capped_sites(bed.sites_dir, work / "sites", "site-b", **caps)
    config = write_daemon_config(work, sites, concurrency=2, **QUIET)
    ledger = migratio_cli.ledger_of(config)
    ids = [ledger.create("site-a", "site-b", image_id).id for image_id in sources]
    samples = caps_run.run_daemons([config], ledger, ids, timeout=1800)
    verified = 0
    for migration_id, sha512 in zip(ids, sources.values(), strict=True):
        migration = ledger.get(migration_id)
        assert migration.state == "done", migration.last_error
        copy = str(migration.dest_image_id)
        verified += glance_peer.sha512_of_image(site_b, copy) == sha512
        glance_peer.delete(site_b, copy)
    measured = caps_run.upload_rate(ledger, ids, samples)
    ledger.close()
    return {
        "bytes": measured.bytes,
        "seconds": measured.seconds,
        "mib_per_s": measured.mib_per_s,
        "overlap_s": measured.overlap_seconds,
        "verified": verified,
    }


def slots(
    bed: testbed_lib.Bed, scratch: Path, postgres_url: str | None, daemons: int
) -> dict[str, Any]:
    work = scratch / f"slots-{daemons}"
    work.mkdir()
    sites = caps_run.capped_sites(bed.sites_dir, work / "sites", "site-b", max_concurrent=1)
    database: dict[str, Any] = {}
    if postgres_url:
        engine = empty_ledger_engine(postgres_url)
        upgrade(engine)
        engine.dispose()
        database["database_url"] = postgres_url
    configs = []
    for n in range(daemons):
        directory = work / f"daemon-{n + 1}"
        directory.mkdir()
        configs.append(
            write_daemon_config(
                directory, sites, concurrency=3, poll_seconds=0.1, **database, **QUIET
            )
        )
    site_a, site_b = glance_peer.connect("site-a"), glance_peer.connect("site-b")
    sources = caps_run.raw_sources(site_a, work, [4, 4, 4])
    ledger = Ledger.open(postgres_url, migrate=False) if postgres_url else None
    ledger = ledger or migratio_cli.ledger_of(configs[0])
    ids = [ledger.create("site-a", "site-b", image_id).id for image_id in sources]
    caps_run.run_daemons(configs, ledger, ids)
    states = [ledger.get(i).state for i in ids]
    seen = caps_run.concurrency(ledger, ids)
    for migration_id in ids:
        if copy := ledger.get(migration_id).dest_image_id:
            glance_peer.delete(site_b, copy)
    for source_id in sources:
        glance_peer.delete(site_a, source_id)
    ledger.close()
    return {
        "ledger": "postgresql" if postgres_url else "sqlite",
        "daemons": daemons,
        "queued": len(ids),
        "max_concurrent": 1,
        "done": states.count("done"),
        "most_running": seen.most_running,
        "waiting_notes": seen.waiting_notes,
        "daemons_that_ran_one": seen.runners,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mib", type=float, default=40.0)
    parser.add_argument("--size-mib", type=int, default=400, help="each of the two images")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("MIGRATIO_TEST_POSTGRES_URL"), help="for slots"
    )
    parser.add_argument("--tiny", action="store_true", help="8 MiB/s, 2 x 16 MiB")
    args = parser.parse_args()
    if args.tiny:
        args.cap_mib, args.size_mib = 8.0, 16
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        try:
            measured = rate(bed, scratch_dir, args.cap_mib, args.size_mib)
            emit("caps", part="rate", **measured)
            print(
                f"2 x {args.size_mib} MiB to site-b capped at {args.cap_mib:g} MiB/s: "
                f"{measured['aggregate_mib_per_s']:.2f} MiB/s aggregate "
                f"({measured['error_pct']:+.1f} %; goal within ±10 %); uncapped in the "
                f"same run {measured['uncapped_mib_per_s']:.2f} MiB/s; "
                f"{measured['sha512_verified']}/4 sha512 verified",
                flush=True,
            )
            runs = [slots(bed, scratch_dir, None, 1)]
            if args.postgres_url:
                runs.append(slots(bed, scratch_dir, args.postgres_url, 2))
            else:
                print("slots on PostgreSQL skipped: no --postgres-url", flush=True)
            for run in runs:
                emit("caps", part="slots", **run)
                print(
                    f"max_concurrent 1, {run['queued']} queued, {run['daemons']} daemon(s) on "
                    f"{run['ledger']}: most running at once {run['most_running']} (goal 1), "
                    f"{run['waiting_notes']} waiting notes, {run['done']} done, "
                    f"{run['daemons_that_ran_one']} daemon(s) ran one",
                    flush=True,
                )
        finally:
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
