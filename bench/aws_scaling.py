"""Benchmark: does OpenStack → AWS (ebs-direct) cost follow the data or the virtual size?

The same amount of data (by default 64 MiB: the same piece lengths and bytes,
scattered over the disk) in qcow2 images of several virtual sizes (by default
1, 8 and 64 GiB), each migrated by a real daemon from the bed's Glance site-a
to its moto (site ``aws-a``), sizes interleaved round by round so load on the
machine falls on all of them alike. Per size it reports:

- wall time exporting → done from the ledger's history (median, min, max over
  the rounds) and the median of each state (exporting, converting, uploading,
  registering);
- the migration work dir's peak disk use (allocated blocks, polled every 10 ms);
- bytes sent (PutSnapshotBlock calls x 512 KiB, from the journal) and the
  non-zero 512 KiB blocks of the image (the least that must be sent);

then the wall-time ratio largest : smallest virtual size (medians, and the
worst case: max of the largest over min of the smallest) and peak disk use over
the data. Goals (issue "Performance", goal 2): ratio <= 1.3, disk <= 2x the data.

    python3 bench/aws_scaling.py [--rounds 3] [--data-mib 64] [--virtual-mib 1024 8192 65536]
    python3 bench/aws_scaling.py --tiny      # 4 MiB of data at 64 and 1024 MiB, 1 round: seconds

moto is reset after each migration (its snapshot blocks live in its RAM, and a
second migration of the same image would otherwise be deduplicated), so use a
test bed of your own: $MIGRATIO_TESTBED_DIR when it points at a running bed,
else one started (and stopped) here.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from migratio.drivers.aws.blocks import BLOCK_SIZE, scan  # noqa: E402
from tests.support import aws_peer, glance_peer, migratio_cli  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402

MIB = 1 << 20
STATES = ("exporting", "converting", "uploading", "registering")
PIECE_LENGTHS = (65536, 300_000, MIB, 3 * MIB)


def make_image(path: Path, virtual_size: int, data_size: int, seed: int = 7) -> int:
    """A qcow2 of ``virtual_size`` holding ``data_size`` bytes of random data in
    pieces of the same lengths and bytes whatever the virtual size, at offsets
    scattered over all of it (first and last 4 KiB included); returns its
    non-zero 512 KiB blocks."""
    pieces = random.Random(seed)
    places = random.Random(seed + 1)
    raw = path.with_suffix(".raw")
    with raw.open("wb") as handle:
        handle.truncate(virtual_size)
        fd = handle.fileno()
        os.pwrite(fd, pieces.randbytes(4096), 0)
        os.pwrite(fd, pieces.randbytes(4096), virtual_size - 4096)
        written = 8192
        while written < data_size:
            length = min(pieces.choice(PIECE_LENGTHS), data_size - written)
            offset = places.randrange(0, virtual_size - length) & ~4095
            os.pwrite(fd, pieces.randbytes(length), offset)
            written += length
    with raw.open("rb") as handle:
        nonzero = sum(1 for _ in scan(handle.fileno(), virtual_size))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return nonzero


class DiskWatch:
    """Peak allocated bytes of the files under a directory (the ledger left out),
    polled from a thread while a migration runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, allocated(self.directory))
            time.sleep(0.01)


def allocated(directory: Path) -> int:
    """Allocated bytes under ``directory``, each file once whatever its names (as
    ``du`` counts): a verified download gets its staged name as a second link."""
    blocks: dict[tuple[int, int], int] = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            if name.startswith("ledger.sqlite"):
                continue
            try:
                found = os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            blocks[(found.st_dev, found.st_ino)] = found.st_blocks * 512
    return sum(blocks.values())


def migrate(source_id: str, workdir: Path, sites: Path, moto_url: str) -> dict[str, Any]:
    """One migration by a real daemon; its timings, peak disk use and bytes sent."""
    workdir.mkdir(parents=True)
    config = write_daemon_config(workdir, sites, concurrency=1)
    [migration_id] = daemon_run.submit(config, [source_id], "aws-a")
    (workdir / "work").mkdir(exist_ok=True)
    with DiskWatch(workdir / "work") as disk:
        migratio_cli.run_until_idle(config, timeout=1800)
    [shown] = daemon_run.show(config, [migration_id])
    assert shown["state"] == "done", shown["error"]
    assert [row["to"] for row in shown["history"]][-2:] == ["registering", "done"], "deduplicated?"
    stamps = {row["to"]: datetime.fromisoformat(row["at"].rstrip("Z")) for row in shown["history"]}
    order = [*STATES, "done"]
    journal = shown["transfer_state"]
    aws_peer.reset(moto_url)
    return {
        "wall": (stamps["done"] - stamps["exporting"]).total_seconds(),
        **{
            state: (stamps[order[i + 1]] - stamps[state]).total_seconds()
            for i, state in enumerate(STATES)
        },
        "peak_disk": disk.peak,
        "blocks_put": journal["blocks_put"],
        "bytes_sent": journal["blocks_put"] * BLOCK_SIZE,
    }


def summarise(virtual: int, nonzero: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [run["wall"] for run in runs]
    return {
        "virtual_mib": virtual // MIB,
        "nonzero_blocks": nonzero,
        "wall_median": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        **{f"{state}_median": statistics.median(run[state] for run in runs) for state in STATES},
        "peak_disk_mib": max(run["peak_disk"] for run in runs) / MIB,
        "sent_mib": max(run["bytes_sent"] for run in runs) / MIB,
    }


def report(data_size: int, summaries: list[dict[str, Any]]) -> None:
    print(f"\n{data_size / MIB:.0f} MiB of data; wall = exporting → done, seconds")
    print(
        f"{'virtual':>9} {'median':>8} {'min':>8} {'max':>8}  "
        f"{'export':>7} {'convert':>7} {'upload':>7} {'register':>8}  "
        f"{'peak disk':>10} {'sent':>9} {'non-zero':>9}"
    )
    for s in summaries:
        print(
            f"{s['virtual_mib']:>5} MiB {s['wall_median']:>8.2f} {s['wall_min']:>8.2f} "
            f"{s['wall_max']:>8.2f}  {s['exporting_median']:>7.2f} {s['converting_median']:>7.2f} "
            f"{s['uploading_median']:>7.2f} {s['registering_median']:>8.2f}  "
            f"{s['peak_disk_mib']:>6.1f} MiB {s['sent_mib']:>5.1f} MiB "
            f"{s['nonzero_blocks'] * BLOCK_SIZE / MIB:>5.1f} MiB"
        )
    small, large = summaries[0], summaries[-1]
    ratio = large["wall_median"] / small["wall_median"]
    worst = large["wall_max"] / small["wall_min"]
    peak = max(s["peak_disk_mib"] for s in summaries) * MIB
    blocks = max(s["nonzero_blocks"] for s in summaries) * BLOCK_SIZE
    print(
        f"wall ratio {large['virtual_mib']} : {small['virtual_mib']} MiB virtual: "
        f"median {ratio:.2f} (worst case {worst:.2f}; goal <= 1.3)\n"
        f"peak work-dir disk / data written: {peak / data_size:.2f} (goal <= 2); "
        f"/ non-zero 512 KiB blocks: {peak / blocks:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=64)
    parser.add_argument("--virtual-mib", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--tiny", action="store_true", help="4 MiB at 64 and 1024 MiB, 1 round")
    args = parser.parse_args()
    if args.tiny:
        args.rounds, args.data_mib, args.virtual_mib = 1, 4, [64, 1024]
    data_size = args.data_mib * MIB
    sizes = sorted(mib * MIB for mib in args.virtual_mib)
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        moto_url = bed.env["MIGRATIO_MOTO_URL"]
        site_a = glance_peer.connect("site-a")
        sources: dict[int, tuple[str, int]] = {}
        try:
            for virtual in sizes:
                image = scratch_dir / f"v{virtual // MIB}.qcow2"
                nonzero = make_image(image, virtual, data_size)
                source_id = glance_peer.upload(
                    site_a, image, name=f"bench-scaling-{virtual // MIB}", architecture="x86_64"
                )
                sources[virtual] = (source_id, nonzero)
                image.unlink()
            runs: dict[int, list[dict[str, Any]]] = {virtual: [] for virtual in sizes}
            for round_number in range(args.rounds):
                for virtual in sizes:
                    measured = migrate(
                        sources[virtual][0],
                        scratch_dir / f"r{round_number}-v{virtual // MIB}",
                        bed.dir / "sites",
                        moto_url,
                    )
                    runs[virtual].append(measured)
                    emit(
                        "aws_scaling",
                        round=round_number,
                        data_mib=args.data_mib,
                        virtual_mib=virtual // MIB,
                        nonzero_blocks=sources[virtual][1],
                        **measured,
                    )
            report(data_size, [summarise(v, sources[v][1], runs[v]) for v in sizes])
        finally:
            for source_id, _ in sources.values():
                glance_peer.delete(site_a, source_id)
            aws_peer.reset(moto_url)
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
