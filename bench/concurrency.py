"""Benchmark: four migrations at once in one daemon, against four concurrent curl streams.

Issue "Performance", goal 4. In each round, against the same test bed:

- baseline: four ``curl GET | curl -T PUT`` pipes at once, each copying one of
  four source images of N MiB from Glance site-a to site-b (bench/transfer_vs_curl.py's
  pipe); wall = first start to last finish;
- OpenStack → OpenStack: the same four images submitted to one daemon with
  ``concurrency: 4`` (``run --until-idle``); wall = the first migration's
  exporting to the last one's done, from the ledger; ratio = that / the baseline
  (goal <= 1.10);
- the daemon's peak RSS with four running on each path (goal <= 150 MiB): the
  O→O run above; four to the AWS site ``aws-a`` (ebs-direct to the bed's moto,
  qcow2 images of ``--aws-virtual-mib`` with ``--aws-data-mib`` of scattered
  data, as bench/aws_vs_legacy.py makes them); four to the SSH site ``site-b-ssh``.

    python3 bench/concurrency.py [--size-mib 1024] [--rounds 3] [--migrations 4] [--tiny]

moto is reset after the AWS run (its snapshot blocks live in its RAM), so use a
test bed of your own: $MIGRATIO_TESTBED_DIR when it points at a running bed,
else one started (and stopped) here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from bench.transfer_vs_curl import curl_copy  # noqa: E402
from tests.support import aws_peer, glance_peer, images  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402

PATHS = ("oo", "aws", "ssh")
MIB = aws_peer.MIB


def curl_streams(sources: list[str], size: int, workdir: Path) -> float:
    """Four pipes at once; wall from the first start to the last finish."""
    dirs = [workdir / f"curl{n}" for n in range(len(sources))]
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(sources)) as pool:
        runs = list(pool.map(lambda source, at: curl_copy(source, size, at), sources, dirs))
    return max(run.finished for run in runs) - min(run.started for run in runs)


def migrate_all(sources: list[str], dest: str, workdir: Path, sites: Path) -> dict[str, Any]:
    """One daemon, ``concurrency`` = the number of sources; the ledger's aggregate
    wall, the daemon's peak RSS and the finished migrations as ``show`` gives them."""
    workdir.mkdir(parents=True)
    config = write_daemon_config(workdir, sites, concurrency=len(sources))
    ids = daemon_run.submit(config, sources, dest)
    daemon = daemon_run.run_until_idle(config)
    shown = daemon_run.show(config, ids)
    for migration in shown:
        assert migration["state"] == "done", migration["error"]
    stamps = [
        {row["to"]: datetime.fromisoformat(row["at"].rstrip("Z")) for row in m["history"]}
        for m in shown
    ]
    first = min(s["exporting"] for s in stamps)
    last = max(s["done"] for s in stamps)
    states = dict.fromkeys(state for m in shown for state in m["durations"])
    return {
        "seconds": (last - first).total_seconds(),
        # Where the aggregate wall goes: each state's longest stay among the migrations.
        "state_seconds": {s: max(m["durations"].get(s, 0.0) for m in shown) for s in states},
        "peak_rss_mib": daemon.peak_rss_mib,
        "cpu_seconds": daemon.cpu_seconds,
        "shown": shown,
    }


def _states(seconds: dict[str, float]) -> str:
    return ", ".join(f"{state} {value:.1f} s" for state, value in seconds.items())


def clear_site_b(shown: list[dict[str, Any]]) -> None:
    """The next run must not find these copies (dedup would skip the transfer)."""
    site_b = glance_peer.connect("site-b")
    for migration in shown:
        glance_peer.delete(site_b, migration["dest_image_id"])


def upload_sources(scratch: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    """Random images for the OpenStack paths, scattered ones for AWS, in site-a."""
    size_mib, aws_virtual_mib, aws_data_mib = args.size_mib, args.aws_virtual_mib, args.aws_data_mib
    site_a = glance_peer.connect("site-a")
    sources: dict[str, list[str]] = {"openstack": [], "aws": []}
    for n in range(args.migrations):
        image = images.random_qcow2(scratch / f"c{n}.qcow2", size_mib)
        sources["openstack"].append(glance_peer.upload(site_a, image, name=f"bench-concurrent-{n}"))
        image.unlink()
        if "aws" not in args.paths:
            continue
        image = aws_peer.scattered_qcow2(
            scratch / f"a{n}.qcow2",
            virtual_size=aws_virtual_mib * MIB,
            data_mib=aws_data_mib,
            seed=100 + n,
        )
        name = f"bench-concurrent-aws-{n}"
        sources["aws"].append(glance_peer.upload(site_a, image, name=name, architecture="x86_64"))
        image.unlink()
    return sources


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] concurrency: {message}", file=sys.stderr, flush=True)


def one_round(
    round_number: int,
    sources: dict[str, list[str]],
    size: int,
    scratch: Path,
    sites: Path,
    args: argparse.Namespace,
) -> dict[str, float]:
    run = scratch / f"r{round_number}"
    measured: dict[str, float] = {}
    if "oo" in args.paths:
        measured["curl_seconds"] = curl_streams(sources["openstack"], size, run)
        progress(f"round {round_number}: curl streams {measured['curl_seconds']:.1f} s")
        openstack = migrate_all(sources["openstack"], "site-b", run / "oo", sites)
        clear_site_b(openstack["shown"])
        progress(
            f"round {round_number}: O→O {openstack['seconds']:.1f} s "
            f"(longest in each state: {_states(openstack['state_seconds'])}; "
            f"daemon CPU {openstack['cpu_seconds']:.1f} s)"
        )
        measured["oo_seconds"] = openstack["seconds"]
        measured["ratio"] = openstack["seconds"] / measured["curl_seconds"]
        measured["oo_peak_rss_mib"] = openstack["peak_rss_mib"]
        measured["oo_cpu_seconds"] = openstack["cpu_seconds"]
    if "ssh" in args.paths:
        ssh = migrate_all(sources["openstack"], "site-b-ssh", run / "ssh", sites)
        clear_site_b(ssh["shown"])
        progress(f"round {round_number}: SSH {ssh['seconds']:.1f} s")
        measured["ssh_seconds"] = ssh["seconds"]
        measured["ssh_peak_rss_mib"] = ssh["peak_rss_mib"]
        measured["ssh_cpu_seconds"] = ssh["cpu_seconds"]
    if "aws" in args.paths:
        aws = migrate_all(sources["aws"], "aws-a", run / "aws", sites)
        aws_peer.reset(os.environ["MIGRATIO_MOTO_URL"])
        progress(f"round {round_number}: AWS {aws['seconds']:.1f} s")
        measured["aws_seconds"] = aws["seconds"]
        measured["aws_peak_rss_mib"] = aws["peak_rss_mib"]
        measured["aws_cpu_seconds"] = aws["cpu_seconds"]
    return measured


def summary(args: argparse.Namespace, results: list[dict[str, float]]) -> None:
    if "oo" in args.paths:
        ratios = [r["ratio"] for r in results]
        print(
            f"{args.migrations} x {args.size_mib} MiB at once, {len(results)} rounds: "
            f"wall ratio migratio/curl median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}; goal <= 1.10)"
        )
    peaks = ", ".join(
        f"{path} {max(r[f'{path}_peak_rss_mib'] for r in results):.0f} MiB" for path in args.paths
    )
    print(
        f"daemon peak RSS, {args.migrations} running (max over rounds; goal <= 150 MiB): {peaks}",
        flush=True,
    )
    cpu = ", ".join(
        f"{path} {statistics.median(r[f'{path}_cpu_seconds'] for r in results):.1f} s"
        for path in args.paths
    )
    print(f"daemon CPU seconds (user + system, median over rounds): {cpu}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--migrations", type=int, default=4, help="at once, on each path")
    parser.add_argument("--aws-virtual-mib", type=int, default=1024)
    parser.add_argument("--aws-data-mib", type=int, default=40)
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="default: all three"
    )
    parser.add_argument("--tiny", action="store_true", help="2 x 8 MiB, O→O and AWS, 1 round")
    args = parser.parse_args()
    if args.tiny:
        # Two, and no SSH site: an SSH-site migration waits tens of seconds on
        # the host's `openstack` CLI (Keystone login, Python start-up) whatever
        # its size, more than CI's whole budget for every bench; bench/ssh_vs_scp.py
        # --tiny still runs the SSH site's upload.
        args.size_mib, args.rounds, args.migrations = 8, 1, 2
        args.aws_virtual_mib, args.aws_data_mib = 64, 4
        args.paths = ["oo", "aws"]
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        site_a = glance_peer.connect("site-a")
        sources: dict[str, list[str]] = {}
        try:
            sources = upload_sources(scratch_dir, args)
            progress("sources uploaded")
            size = glance_peer.wait_active(site_a, sources["openstack"][0])["size"]
            results = []
            for round_number in range(args.rounds):
                measured = one_round(round_number, sources, size, scratch_dir, bed.sites_dir, args)
                results.append(measured)
                emit(
                    "concurrency",
                    size_mib=args.size_mib,
                    migrations=args.migrations,
                    aws_virtual_mib=args.aws_virtual_mib,
                    aws_data_mib=args.aws_data_mib,
                    round=round_number,
                    skipped_paths=[path for path in PATHS if path not in args.paths],
                    **measured,
                )
            summary(args, results)
        finally:
            for source_id in (s for group in sources.values() for s in group):
                glance_peer.delete(site_a, source_id)
            aws_peer.reset(bed.env["MIGRATIO_MOTO_URL"])
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
