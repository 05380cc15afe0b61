"""Benchmark: OpenStack → AWS by ebs-direct versus the legacy path, same image, same run.

The image is a qcow2 of 1 GiB virtual size with ~40 MiB of random data at
scattered offsets (tests/aws_peer.py), or with ``--size-mib N`` a qcow2 of N MiB
of random data, every block of it (data = virtual size: how cost grows with
the image). Both paths start from the image in the
test bed's Glance site-a and end at the bed's moto:

- ebs-direct: a real migration by the daemon to site ``aws-a`` (download,
  safety check, map the qcow2's data with ``qemu-img map``, PutSnapshotBlock
  of the non-zero blocks read in place from the staged qcow2, with the
  manifest digest of their SHA-256s, RegisterImage). Time: the ledger's
  exporting → done, and each state's share of it.
- legacy: what the Ruby tool did before its ec2-import-instance: download,
  ``qemu-img convert -O raw``, then upload the whole raw file to S3 with boto3
  (multipart, 10 threads). moto assembles every completed S3 object in RAM
  (~2.5x its size), so the 1 GiB raw goes up as four 256 MiB objects: the same
  bytes and the same part requests, three more CompleteMultipartUpload calls.

Bytes sent are payload bytes (HTTP framing not counted): blocks PUT x 512 KiB
from the migration's journal, and the raw file's size. Goals: ebs-direct
<= 0.5x the legacy wall time, <= 1.05x the non-zero 512 KiB blocks' bytes.

Overlap (issue 12, goal 3): ebs-direct sends a qcow2's blocks while it
downloads (migratio/following.py). Its wall time is set against the longer of
the two transfers done alone, in the same round: the download (the legacy
path's Glance GET to a file) and the upload (the non-zero blocks of the same
raw disk PUT by 16 threads, the site's default workers, with their SHA-256s:
``upload_alone``). The same daemon with ``follow_download: false`` on the site
(download whole, then send: the path before) runs each round too, as the
same-run baseline. Goal: overlapped wall <= 1.2x max(download, upload).

    python3 bench/aws_vs_legacy.py [--rounds 3] [--size-mib N] [--tiny]

Uses $MIGRATIO_TESTBED_DIR when it points at a running test bed, else starts one.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from tests.support import aws_peer, glance_peer, images  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402

MIB = aws_peer.MIB
OBJECT_LIMIT = 256 * MIB  # see the module docstring: moto's RAM
CORES = os.cpu_count() or 1
BUCKET = "migratio-bench-legacy"


def legacy(source_id: str, moto_url: str, workdir: Path) -> dict[str, float]:
    """Download, convert to raw, upload the whole raw file to S3."""
    s3 = aws_peer.client("s3", moto_url)
    # Made each round: ebs_direct resets moto, the bucket with it.
    region = {"LocationConstraint": aws_peer.REGION}
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration=region)
    site_a = glance_peer.connect("site-a")
    source = workdir / "legacy.qcow2"
    raw = workdir / "legacy.raw"
    started = time.monotonic()
    with source.open("wb") as out:
        for chunk in glance_peer.chunks_of(site_a, source_id):
            out.write(chunk)
    downloaded = time.monotonic()
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(source), str(raw)], check=True
    )
    converted = time.monotonic()
    size = raw.stat().st_size
    config = TransferConfig(multipart_chunksize=16 * MIB, max_concurrency=10)
    keys = []
    with raw.open("rb") as handle:
        for offset in range(0, size, OBJECT_LIMIT):
            key = f"legacy/{source_id}/{offset // OBJECT_LIMIT}.raw"
            piece = _Slice(handle, offset, min(OBJECT_LIMIT, size - offset))
            s3.upload_fileobj(piece, BUCKET, key, Config=config)
            keys.append(key)
    uploaded = time.monotonic()
    for key in keys:
        s3.delete_object(Bucket=BUCKET, Key=key)
    source.unlink()
    busy = daemon_run.machine_busy_seconds()
    alone = upload_alone(raw, moto_url)
    alone_busy = (daemon_run.machine_busy_seconds() - busy) / (alone * CORES)
    raw.unlink()
    return {
        "upload_alone_seconds": alone,
        "upload_alone_machine_busy": alone_busy,
        "legacy_seconds": uploaded - started,
        "legacy_download_seconds": downloaded - started,
        "legacy_convert_seconds": converted - downloaded,
        "legacy_upload_seconds": uploaded - converted,
        "legacy_bytes_sent": size,
    }


def upload_alone(raw: Path, moto_url: str, workers: int = 16) -> float:
    """Seconds to PUT the raw disk's non-zero blocks into a new snapshot and
    complete it, nothing else running: the upload ebs-direct overlaps with the
    download. The blocks are read (page cache) and hashed in the timed part too,
    as the daemon does; holes are skipped as it does (SEEK_DATA)."""
    ebs = aws_peer.client("ebs", moto_url)
    block = aws_peer.BLOCK
    size = raw.stat().st_size
    started = time.monotonic()
    snapshot = ebs.start_snapshot(VolumeSize=max(1, -(-size // (1 << 30))))["SnapshotId"]

    room = threading.BoundedSemaphore(2 * workers)

    def put(index: int, data: bytes) -> bytes:
        try:
            digest = hashlib.sha256(data).digest()
            ebs.put_snapshot_block(
                SnapshotId=snapshot,
                BlockIndex=index,
                BlockData=data,
                DataLength=block,
                Checksum=base64.b64encode(digest).decode(),
                ChecksumAlgorithm="SHA256",
            )
            return digest
        finally:
            room.release()

    with raw.open("rb") as handle, ThreadPoolExecutor(workers) as pool:
        fd, futures, zero = handle.fileno(), [], bytes(block)
        for start, end in _data_ranges(fd, size):
            for index in range(start // block, -(-end // block)):
                data = os.pread(fd, block, index * block).ljust(block, b"\0")
                if data != zero:
                    room.acquire()  # reads ahead of the PUTs by at most `workers` blocks
                    futures.append(pool.submit(put, index, data))
        digests = [f.result() for f in futures]
    linear = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    ebs.complete_snapshot(
        SnapshotId=snapshot,
        ChangedBlocksCount=len(digests),
        Checksum=linear,
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    return time.monotonic() - started


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    ranges, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        ranges.append((start, end))
        offset = end
    return ranges


def sequential_sites(sites: Path, into: Path) -> Path:
    """The bed's sites, with aws-a staging the whole image before sending it."""
    if not into.exists():
        shutil.copytree(sites, into)
        with (into / "aws-a.yml").open("a") as out:
            out.write("follow_download: false\n")
    return into


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


class _Slice:
    """A read-only window of a file, for one S3 object."""

    def __init__(self, handle: Any, offset: int, length: int) -> None:
        self._handle, self._offset, self._length, self._at = handle, offset, length, 0

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._at
        size = left if size < 0 else min(size, left)
        data = os.pread(self._handle.fileno(), size, self._offset + self._at)
        self._at += len(data)
        return data

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._at, 2: self._length}[whence]
        self._at = max(0, min(self._length, base + position))
        return self._at

    def tell(self) -> int:
        return self._at


def ebs_direct(
    source_id: str, moto_url: str, workdir: Path, sites: Path, prefix: str = "ebs"
) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    aws_peer.reset(moto_url)  # the upload alone's snapshot and the legacy bucket
    config = write_daemon_config(workdir, sites, concurrency=1)
    [migration_id] = daemon_run.submit(config, [source_id], "aws-a")
    daemon = daemon_run.run_until_idle(config)
    [shown] = daemon_run.show(config, [migration_id])
    assert shown["state"] == "done", shown["error"]
    assert [row["to"] for row in shown["history"]][-2:] == ["registering", "done"], "deduplicated?"
    stamps = {row["to"]: datetime.fromisoformat(row["at"].rstrip("Z")) for row in shown["history"]}
    journal = shown["transfer_state"]
    # The next round must not find this AMI (dedup would skip the copy), and
    # moto keeps snapshot blocks in its RAM (4 GiB a round at --size-mib 4096).
    aws_peer.reset(moto_url)
    measured = {
        "seconds": (stamps["done"] - stamps["exporting"]).total_seconds(),
        "exporting_seconds": (stamps["converting"] - stamps["exporting"]).total_seconds(),
        "converting_seconds": (stamps["uploading"] - stamps["converting"]).total_seconds(),
        "uploading_seconds": (stamps["registering"] - stamps["uploading"]).total_seconds(),
        "registering_seconds": (stamps["done"] - stamps["registering"]).total_seconds(),
        "process_seconds": daemon.seconds,
        # The share of all cores busy meanwhile (the peers' work too): near 1, the
        # run is bound by the machine's CPU, not by how the transfers overlap.
        "machine_busy": daemon.machine_cpu_seconds / (daemon.seconds * CORES),
        "peak_rss_mib": daemon.peak_rss_mib,
        "blocks_put": journal["blocks_put"],
        "bytes_sent": journal["blocks_put"] * aws_peer.BLOCK,
    }
    return {f"{prefix}_{key}": value for key, value in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--size-mib", type=int, help="N MiB of random data, virtual size N MiB (default: scattered)"
    )
    parser.add_argument("--tiny", action="store_true", help="8 MiB of data, 1 round (CI)")
    args = parser.parse_args()
    if args.tiny:
        args.size_mib, args.rounds = 8, 1
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        moto_url = bed.env["MIGRATIO_MOTO_URL"]
        try:
            if args.size_mib:
                image = images.random_qcow2(scratch_dir / "bench.qcow2", args.size_mib)
                # Random data: every 512 KiB block is non-zero (no 4 GiB raw to read).
                nonzero = -(-args.size_mib * MIB // aws_peer.BLOCK)
                described = f"{args.size_mib} MiB of random data"
            else:
                image = aws_peer.scattered_qcow2(scratch_dir / "bench.qcow2")
                raw = images.as_raw(image, scratch_dir / "bench.raw")
                nonzero = aws_peer.nonzero_blocks(raw)
                raw.unlink()
                described = "1 GiB virtual"
            site_a = glance_peer.connect("site-a")
            source_id = glance_peer.upload(site_a, image, name="bench-aws", architecture="x86_64")
            results = []
            sequential = sequential_sites(bed.dir / "sites", scratch_dir / "sites-sequential")
            for round_number in range(args.rounds):
                measured = legacy(source_id, moto_url, scratch_dir)
                if not args.tiny:  # CI's run: the overlapped path only
                    seq_dir = scratch_dir / f"seq{round_number}"
                    measured |= ebs_direct(source_id, moto_url, seq_dir, sequential, "seq")
                run_dir = scratch_dir / f"run{round_number}"
                measured |= ebs_direct(source_id, moto_url, run_dir, bed.dir / "sites")
                measured["time_ratio"] = measured["ebs_seconds"] / measured["legacy_seconds"]
                alone = max(measured["legacy_download_seconds"], measured["upload_alone_seconds"])
                measured["overlap_ratio"] = measured["ebs_seconds"] / alone
                if "seq_seconds" in measured:
                    measured["sequential_overlap_ratio"] = measured["seq_seconds"] / alone
                measured["bytes_vs_nonzero"] = measured["ebs_blocks_put"] / nonzero
                results.append(measured)
                emit(
                    "aws_vs_legacy",
                    size_mib=args.size_mib,
                    image="random" if args.size_mib else "scattered-1GiB-virtual",
                    round=round_number,
                    nonzero_blocks=nonzero,
                    **measured,
                )
            glance_peer.delete(site_a, source_id)
            ratios = sorted(r["time_ratio"] for r in results)
            median = ratios[len(ratios) // 2]
            legacy_median = sorted(r["legacy_seconds"] for r in results)[len(results) // 2]
            ebs_median = sorted(r["ebs_seconds"] for r in results)[len(results) // 2]
            print(
                f"{described}, {nonzero} non-zero 512 KiB blocks "
                f"({nonzero * aws_peer.BLOCK / MIB:.1f} MiB), {len(results)} rounds:\n"
                f"  ebs-direct: {ebs_median:.2f} s median, "
                f"{max(r['ebs_bytes_sent'] for r in results) / MIB:.1f} MiB sent "
                f"({max(r['bytes_vs_nonzero'] for r in results):.3f}x the non-zero blocks), "
                f"peak RSS {max(r['ebs_peak_rss_mib'] for r in results):.0f} MiB\n"
                f"  legacy:     {legacy_median:.2f} s median, "
                f"{results[0]['legacy_bytes_sent'] / MIB:.0f} MiB sent\n"
                f"  time ratio ebs-direct/legacy: median {median:.3f} "
                f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})\n"
                f"  ebs-direct by state, medians: "
                + ", ".join(
                    f"{state} {statistics.median(r[f'ebs_{state}_seconds'] for r in results):.2f} s"
                    for state in ("exporting", "converting", "uploading", "registering")
                )
                + "\n  alone: download "
                + _spread([r["legacy_download_seconds"] for r in results])
                + " s, upload "
                + _spread([r["upload_alone_seconds"] for r in results])
                + " s"
                + "\n  overlap (goal 3): ebs-direct wall / max(download, upload) alone: "
                + _spread([r["overlap_ratio"] for r in results])
                + " (goal <= 1.2)"
            )
            if not args.tiny:
                print(
                    "  same run, whole download then upload (follow_download: false): "
                    + _spread([r["sequential_overlap_ratio"] for r in results])
                    + f", wall {_spread([r['seq_seconds'] for r in results])} s"
                )
        finally:
            aws_peer.reset(moto_url)
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
