"""Benchmark: fan-out, read once and land everywhere (issue 13, "Fan-out").

In each round, against the same test bed, with site-a's Glance read through a
counting TCP proxy (``image_endpoint_override``):

- singles (the same-run baseline): the image migrated alone to each of
  ``site-b`` (qcow2 as it is: streamed), ``site-b-raw`` (converted to raw),
  ``aws-a`` (ebs-direct, reading the staged image through its disk map) and
  ``site-b-ssh`` (SFTP to the SSH host, which registers it in site-b's Glance);
  wall = exporting to done, from the ledger;
- fan-out: one ``submit`` to all four (one group): bytes read from site-a over
  the image size (goal 1.00: one read), wall = the first member's exporting to
  the last one's done over the slowest single (goal <= 1.25), and every copy
  verified by checksum (Glance's sha512 of each image against the source qcow2
  or its raw conversion; the AWS snapshot rebuilt block by block and compared);
- outage: site-b and aws-a in one group; site-b's Glance is stopped once
  site-b's member has sent a quarter of the image, kept down until aws-a's
  member has ended, then started: aws-a must be done while it was down, site-b
  must retry and end done, both verified, the source read once.

With ``--link-mib-s N`` every destination site gets ``max_mib_per_s: N``, as
the link to a remote site would bound it, and the outage is left out. On a
machine whose few cores also run every peer (two Glances, moto, sshd, the SSH
host's ``openstack`` CLI), the uncapped fan-out is bound by that CPU: it costs
about what the four singles cost together. With links slower than the machine,
as between real sites, the wall shows what the fan-out itself adds.

    python3 bench/fanout.py [--size-mib 1024] [--rounds 1] [--link-mib-s N] [--tiny]

Uses $MIGRATIO_TESTBED_DIR when it points at a running bed, else starts (and
stops) one. moto is reset after each AWS migration (its blocks live in its RAM),
and every copy is deleted after it is checked (a copy left would be found by the
next run instead of being made).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402
import yaml  # noqa: E402
from testbed_lib import pidfile  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from migratio import operations  # noqa: E402
from migratio.config import load_settings  # noqa: E402
from migratio.ledger.store import Ledger  # noqa: E402
from tests.support import aws_peer, glance_peer, images, migratio_cli, outages  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.freezing_proxy import DOWN, FreezingProxy  # noqa: E402

DESTINATIONS = ("site-b", "site-b-raw", "aws-a", "site-b-ssh")
QUIET = {"intake": False, "feedback": False, "log_level": "INFO"}


class Bed:
    """The bed's sites, site-a read through ``proxy``; checks and removes copies."""

    def __init__(
        self, bed: testbed_lib.Bed, proxy: FreezingProxy, scratch: Path, link_mib_s: int | None
    ) -> None:
        self.bed = bed
        self.proxy = proxy
        self.moto_url = str(bed.env["MIGRATIO_MOTO_URL"])
        clouds = yaml.safe_load(Path(bed.env["OS_CLIENT_CONFIG_FILE"]).read_text())
        entry = yaml.safe_load(yaml.safe_dump(clouds["clouds"]["site-a"]))
        entry["image_endpoint_override"] = proxy.url
        clouds["clouds"]["site-a-proxied"] = entry
        self.clouds = scratch / "clouds.yaml"
        self.clouds.touch(mode=0o600)
        self.clouds.write_text(yaml.safe_dump(clouds))
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(self.clouds)  # for the daemons we start
        self.sites = scratch / "sites"
        self.sites.mkdir()
        for site in DESTINATIONS:
            settings = yaml.safe_load((bed.sites_dir / f"{site}.yml").read_text())
            if link_mib_s is not None:
                settings["max_mib_per_s"] = link_mib_s
            (self.sites / f"{site}.yml").write_text(yaml.safe_dump(settings))
        site_a = yaml.safe_load((bed.sites_dir / "site-a.yml").read_text())
        (self.sites / "site-a.yml").write_text(
            yaml.safe_dump({**site_a, "cloud": "site-a-proxied"})
        )
        self.site_b = glance_peer.connect("site-b")

    def config(self, work: Path, concurrency: int, **overrides: Any) -> Path:
        work.mkdir(parents=True)
        return write_daemon_config(work, self.sites, concurrency=concurrency, **QUIET, **overrides)

    def peers_cpu_seconds(self) -> float:
        """CPU seconds used so far by everything on this machine a fan-out talks to
        but the daemon: the bed's servers and their children (sshd's sessions, the
        SSH host's ``openstack`` CLI) and this process (the counting proxy)."""
        servers = [server.pid for server in pidfile.load(self.bed.dir)]
        return daemon_run.tree_cpu_seconds(servers) + daemon_run.cpu_seconds(os.getpid())

    def verify_and_remove(self, migration: Any, sources: dict[str, Any], scratch: Path) -> bool:
        """Whether the copy holds the source's bytes (by checksum); then delete it."""
        if migration.dest_site == "aws-a":
            ec2 = aws_peer.client("ec2", self.moto_url)
            ebs = aws_peer.client("ebs", self.moto_url)
            (snapshot,) = aws_peer.snapshots_of(ec2, migration.id)
            rebuilt = scratch / "rebuilt.raw"
            aws_peer.rebuild_disk(ebs, snapshot["SnapshotId"], rebuilt, sources["raw_size"])
            same = images.sha512_of(rebuilt) == str(sources["raw_sha512"])
            rebuilt.unlink()
            aws_peer.reset(self.moto_url)
            return same
        wanted = str(sources["raw_sha512" if migration.dest_site == "site-b-raw" else "sha512"])
        copy = str(migration.dest_image_id)
        same = glance_peer.sha512_of_image(self.site_b, copy) == wanted
        glance_peer.delete(self.site_b, copy)
        return same


def wall(ledger: Ledger, migration_ids: list[str]) -> float:
    """The first exporting to the last done, from the ledger's audit rows."""
    first, last = [], []
    for migration_id in migration_ids:
        at = {r.to_state: r.at for r in ledger.history(migration_id)}
        first.append(_naive(at["exporting"]))
        last.append(_naive(at["done"]))
    return (max(last) - min(first)).total_seconds()


def _naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


@dataclass(frozen=True)
class Single:
    """One destination alone: its wall (exporting to done), the machine's busy CPU
    and the daemon's own (the rest is the peers', qemu-img's and the kernel's)."""

    seconds: float
    machine_cpu_seconds: float
    daemon_cpu_seconds: float


def single(bed: Bed, work: Path, source_id: str, dest: str, sources: dict[str, Any]) -> Single:
    config = bed.config(work, 1)
    ledger = migratio_cli.ledger_of(config)
    migration = ledger.create("site-a", dest, source_id)
    run = daemon_run.run_until_idle(config)
    done = ledger.get(migration.id)
    assert done.state == "done", f"{dest}: {done.last_error}"
    seconds = wall(ledger, [migration.id])
    assert bed.verify_and_remove(done, sources, work), f"{dest}: copy differs"
    ledger.close()
    return Single(seconds, run.machine_cpu_seconds, run.cpu_seconds)


def fanout(
    bed: Bed, work: Path, source_id: str, sources: dict[str, Any], destinations: tuple[str, ...]
) -> dict[str, Any]:
    config = bed.config(work, len(destinations))
    ledger = migratio_cli.ledger_of(config)
    members = operations.submit_group(
        load_settings(config), ledger, source_id, "site-a", destinations
    )
    before = bed.proxy.moved(DOWN)
    peers_before = bed.peers_cpu_seconds()
    run = daemon_run.run_until_idle(config)
    peers_cpu = bed.peers_cpu_seconds() - peers_before
    read = bed.proxy.moved(DOWN) - before
    ids = [m.id for m in members]
    ended = [ledger.get(i) for i in ids]
    for migration in ended:
        assert migration.state == "done", f"{migration.dest_site}: {migration.last_error}"
    streamed = [
        m.dest_site
        for m in ended
        if any("streamed from the group's one read" in r.message for r in ledger.history(m.id))
    ]
    seconds = wall(ledger, ids)
    verified = sum(bed.verify_and_remove(m, sources, work) for m in ended)
    ledger.close()
    return {
        "seconds": seconds,
        "read_bytes": read,
        "verified": verified,
        "streamed": streamed,
        "peak_rss_mib": run.peak_rss_mib,
        "machine_cpu_seconds": run.machine_cpu_seconds,
        "daemon_cpu_seconds": run.cpu_seconds,
        "peers_cpu_seconds": peers_cpu,
    }


def outage(
    bed: Bed, work: Path, source_id: str, sources: dict[str, Any], size: int
) -> dict[str, Any]:
    """site-b's Glance stopped mid-upload until aws-a's member has ended."""
    # Its attempts must outlast the outage, which lasts as long as aws-a takes.
    config = bed.config(work, 2, retry=outages.outlasting(900))
    ledger = migratio_cli.ledger_of(config)
    members = operations.submit_group(
        load_settings(config), ledger, source_id, "site-a", ("site-b", "aws-a")
    )
    by_site = {m.dest_site: m.id for m in members}
    before = bed.proxy.moved(DOWN)
    daemon, _ = migratio_cli.start_and_wait(
        config, by_site["site-b"], work / "migratio.log", state="uploading", min_bytes=size // 4
    )
    try:
        testbed_lib.stop_service(bed.bed.dir, "glance-site-b")
        down_at = time.monotonic()
        try:
            outages.wait(
                lambda: ledger.get(by_site["aws-a"]).state in ("done", "failed"),
                1800,
                "aws-a's member to end",
            )
            aws_done_while_down = ledger.get(by_site["aws-a"]).state == "done"
            site_b_while_down = ledger.get(by_site["site-b"]).state
        finally:
            testbed_lib.start_service(bed.bed.dir, "glance-site-b")
            down_for = time.monotonic() - down_at
        back_at = time.monotonic()
        migratio_cli.wait_for(ledger, by_site["site-b"], state="done", timeout=1800)
        site_b_after = time.monotonic() - back_at
    finally:
        daemon.terminate()
        daemon.wait(120)
    read = bed.proxy.moved(DOWN) - before
    ended = [ledger.get(i) for i in by_site.values()]
    retries = sum("failed, retrying" in r.message for r in ledger.history(by_site["site-b"]))
    verified = sum(bed.verify_and_remove(m, sources, work) for m in ended)
    ledger.close()
    return {
        "aws_done_while_down": aws_done_while_down,
        "site_b_state_while_down": site_b_while_down,
        "site_b_retries": retries,
        "down_seconds": down_for,
        "site_b_done_after_back_s": site_b_after,
        "both_done": all(m.state == "done" for m in ended),
        "verified": verified,
        "read_bytes": read,
    }


def measure(
    bed: testbed_lib.Bed,
    size_mib: int,
    rounds: int,
    scratch: Path,
    destinations: tuple[str, ...],
    link_mib_s: int | None,
    with_outage: bool,
) -> None:
    glance = urllib.parse.urlsplit(bed.glance_urls["site-a"])
    assert glance.hostname and glance.port
    with FreezingProxy(glance.hostname, glance.port) as proxy:
        sites = Bed(bed, proxy, scratch, link_mib_s)
        source_file = images.random_qcow2(scratch / "fanout.qcow2", size_mib)
        raw_file = images.as_raw(source_file, scratch / "fanout.raw")
        sources = {
            "sha512": images.sha512_of(source_file),
            "raw_sha512": images.sha512_of(raw_file),
            "raw_size": raw_file.stat().st_size,
        }
        raw_file.unlink()
        size = source_file.stat().st_size
        site_a = glance_peer.connect("site-a")
        source_id = glance_peer.upload(site_a, source_file, name="fan-out bench")
        try:
            for n in range(1, rounds + 1):
                work = scratch / f"round-{n}"
                alone = {
                    dest: single(sites, work / dest, source_id, dest, sources)
                    for dest in destinations
                }
                singles = {dest: run.seconds for dest, run in alone.items()}
                singles_cpu = sum(run.machine_cpu_seconds for run in alone.values())
                singles_daemon_cpu = sum(run.daemon_cpu_seconds for run in alone.values())
                slowest = max(singles, key=lambda d: singles[d])
                group = fanout(sites, work / "fanout", source_id, sources, destinations)
                emit(
                    "fanout",
                    round=n,
                    size_mib=size_mib,
                    image_bytes=size,
                    destinations=list(destinations),
                    link_mib_s=link_mib_s,
                    skipped=[d for d in DESTINATIONS if d not in destinations],
                    read_ratio=group["read_bytes"] / size,
                    read_bytes=group["read_bytes"],
                    seconds=group["seconds"],
                    slowest_single=slowest,
                    slowest_single_seconds=singles[slowest],
                    wall_ratio=group["seconds"] / singles[slowest],
                    verified=group["verified"],
                    streamed=group["streamed"],
                    peak_rss_mib=group["peak_rss_mib"],
                    # The machine's busy CPU seconds: the fan-out's and the singles'
                    # together; the first over the core count bounds its wall from below.
                    machine_cpu_seconds=group["machine_cpu_seconds"],
                    singles_machine_cpu_seconds=singles_cpu,
                    daemon_cpu_seconds=group["daemon_cpu_seconds"],
                    singles_daemon_cpu_seconds=singles_daemon_cpu,
                    peers_cpu_seconds=group["peers_cpu_seconds"],
                    cores=os.cpu_count(),
                    **{f"single_{d.replace('-', '_')}_seconds": s for d, s in singles.items()},
                )
                print(
                    f"round {n}: fan-out to {len(destinations)} in {group['seconds']:.1f} s, "
                    f"{group['seconds'] / singles[slowest]:.3f}x the slowest single "
                    f"({slowest}, {singles[slowest]:.1f} s); "
                    f"read {group['read_bytes'] / size:.4f}x the image; "
                    f"{group['verified']}/{len(destinations)} verified; machine CPU "
                    f"{group['machine_cpu_seconds']:.1f} s (singles {singles_cpu:.1f} s), "
                    f"the daemon's {group['daemon_cpu_seconds']:.1f} s "
                    f"(singles {singles_daemon_cpu:.1f} s), the peers' "
                    f"{group['peers_cpu_seconds']:.1f} s on {os.cpu_count()} cores"
                )
                if not with_outage:
                    continue
                down = outage(sites, work / "outage", source_id, sources, size)
                emit(
                    "fanout_outage",
                    round=n,
                    size_mib=size_mib,
                    read_ratio=down.pop("read_bytes") / size,
                    **down,
                )
                print(f"round {n}: site-b's Glance stopped mid-upload: {down}")
        finally:
            glance_peer.delete(site_a, source_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--link-mib-s", type=int, help="cap each destination site (MiB/s)")
    parser.add_argument("--tiny", action="store_true", help="one round of 16 MiB (CI)")
    args = parser.parse_args()
    size_mib, rounds = (16, 1) if args.tiny else (args.size_mib, args.rounds)
    # --tiny leaves out the SSH site (its host's `openstack` CLI costs seconds
    # whatever the size, as in bench/concurrency.py) and the outage (a Glance
    # restart): tests/e2e/test_fanout_outage.py runs that one in CI.
    destinations = DESTINATIONS[:3] if args.tiny else DESTINATIONS
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else Path(scratch) / "bed")
        os.environ.update(bed.env)
        try:
            # The outage needs a Glance stopped mid-upload (not --tiny's 16 MiB),
            # and is measured once, without caps.
            with_outage = not args.tiny and args.link_mib_s is None
            measure(
                bed, size_mib, rounds, Path(scratch), destinations, args.link_mib_s, with_outage
            )
        finally:
            aws_peer.reset(bed.env["MIGRATIO_MOTO_URL"])
            if not reuse:
                testbed_lib.down(bed.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
