"""Benchmark: migratio site-a → site-b versus `curl GET | curl -T PUT` of the same bytes.

Both run in the same process tree against the same two Glances of the test bed;
the ratio is what matters, not the absolute figures. Also reports the daemon's
peak RSS and curl's (both curls' added up), each process's VmHWM
(bench/daemon_run.py).

    python3 bench/transfer_vs_curl.py [--size-mib 1024] [--rounds 2] [--tiny]

Uses $MIGRATIO_TESTBED_DIR when it points at a running test bed, else starts one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from openstack.connection import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from tests.support import glance_peer, images  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402


def _image_api(conn: Connection) -> str:
    endpoint = str(conn.image.get_endpoint()).rstrip("/")
    return endpoint if endpoint.endswith("/v2") else endpoint + "/v2"


def _token_header(workdir: Path, conn: Connection, name: str) -> Path:
    path = workdir / f"token-{name}.headers"
    path.touch(mode=0o600)
    path.write_text(f"X-Auth-Token: {conn.session.get_token()}\n")
    return path


@dataclass(frozen=True)
class CurlRun:
    """One ``curl GET | curl -T PUT``: when it ran (monotonic clock) and the two
    curls' peak RSS added up."""

    started: float
    finished: float
    peak_rss_mib: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def curl_copy(source_id: str, size: int, workdir: Path) -> CurlRun:
    """The baseline: Glance A's download piped straight into Glance B's upload."""
    site_a, site_b = glance_peer.connect("site-a"), glance_peer.connect("site-b")
    target = site_b.image.create_image(
        name="curl-baseline", disk_format="qcow2", container_format="bare", allow_duplicates=True
    )
    get_url = _image_api(site_a) + f"/images/{source_id}/file"
    put_url = _image_api(site_b) + f"/images/{target.id}/file"
    # Tokens reach curl through header files, not argv: no secret shows in `ps`.
    headers_a = _token_header(workdir, site_a, "a")
    headers_b = _token_header(workdir, site_b, "b")
    started = time.monotonic()
    reader = subprocess.Popen(
        ["curl", "-sSf", "-H", f"@{headers_a}", get_url], stdout=subprocess.PIPE
    )
    upload = ["curl", "-sSf", "-X", "PUT", "-T", "-", "-H", f"@{headers_b}", put_url]
    upload[-1:-1] = ["-H", "Content-Type: application/octet-stream"]
    writer = subprocess.Popen(upload, stdin=reader.stdout)
    assert reader.stdout is not None
    reader.stdout.close()
    peak = daemon_run.peak_rss_mib([reader, writer])
    assert reader.returncode == 0 and writer.returncode == 0
    finished = time.monotonic()
    copied = glance_peer.wait_active(site_b, str(target.id))
    assert copied["size"] == size
    glance_peer.delete(site_b, str(target.id))
    return CurlRun(started, finished, peak)


def migratio_copy(source_id: str, workdir: Path, sites: Path) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_daemon_config(workdir, sites, concurrency=1)
    [migration_id] = daemon_run.submit(config, [source_id], "site-b")
    daemon = daemon_run.run_until_idle(config)
    [shown] = daemon_run.show(config, [migration_id])
    assert shown["state"] == "done", shown["error"]
    stamps = {row["to"]: datetime.fromisoformat(row["at"].rstrip("Z")) for row in shown["history"]}
    glance_peer.delete(glance_peer.connect("site-b"), shown["dest_image_id"])
    return {
        "migration_seconds": (stamps["done"] - stamps["exporting"]).total_seconds(),
        "process_seconds": daemon.seconds,
        "peak_rss_mib": daemon.peak_rss_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="8 MiB, 1 round (CI)")
    args = parser.parse_args()
    if args.tiny:
        args.size_mib, args.rounds = 8, 1
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        try:
            image = images.random_qcow2(scratch_dir / "bench.qcow2", args.size_mib)
            size = image.stat().st_size
            site_a = glance_peer.connect("site-a")
            source_id = glance_peer.upload(site_a, image, name="bench")
            image.unlink()
            results = []
            for round_number in range(args.rounds):
                curl = curl_copy(source_id, size, scratch_dir)
                measured = migratio_copy(
                    source_id, scratch_dir / f"run{round_number}", bed.dir / "sites"
                )
                results.append(
                    {
                        "curl_seconds": curl.seconds,
                        "curl_peak_rss_mib": curl.peak_rss_mib,
                        **measured,
                        "ratio": measured["migration_seconds"] / curl.seconds,
                    }
                )
                emit(
                    "transfer_vs_curl",
                    size_mib=args.size_mib,
                    round=round_number,
                    **results[-1],
                )
            glance_peer.delete(site_a, source_id)
            ratios = sorted(r["ratio"] for r in results)
            median = ratios[len(ratios) // 2]
            print(
                f"size {size / 2**20:.0f} MiB, {len(results)} rounds: ratio migratio/curl "
                f"median {median:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}); "
                f"peak RSS {max(r['peak_rss_mib'] for r in results):.0f} MiB"
            )
        finally:
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
