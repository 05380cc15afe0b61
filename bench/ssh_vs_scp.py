"""Benchmark: the SSH site's upload path versus `scp` of the same file to the same sshd.

Both send one local file to the test bed's sshd (the "external host" of
``site-b-ssh``), in the same run, alternating, so the ratio is what matters:
- ``receive``: ``OpenStackSshSiteDriver.receive`` as the uploading state calls it:
  the bytes through OpenSSH's ``ssh`` to a writer that hashes them on the host
  (sha512), with the block journal on this side;
- ``sftp``: the same, with the bytes through paramiko's SFTP (the driver's way
  where there is no ``ssh`` binary, and its only way before), the host's hasher
  following the file;
- ``scp``: OpenSSH's own client (SFTP protocol, its default cipher), nothing checked.

Besides wall time, each round reports CPU seconds per GiB (user + sys, less
sensitive to a loaded machine than wall time): the client's (this process for
``receive``, the ``scp`` child for scp) and the host's (sshd's sessions, the
SFTP server and, for ``receive``, the host-side sha512, read from the bed's
sshd as the CPU time of its reaped children).

With ``--migrate``, also one whole migration site-a → site-b-ssh of a qcow2 of
the same size through the daemon, with the time spent in each state.

    python3 bench/ssh_vs_scp.py [--size-mib 1024] [--rounds 3] [--migrate] [--tiny]

Uses $MIGRATIO_TESTBED_DIR when it points at a running test bed, else starts one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench.rounds import emit  # noqa: E402
from migratio.config import OpenStackSshSite  # noqa: E402
from migratio.drivers.base import RecordSpec  # noqa: E402
from migratio.drivers.ssh.driver import OpenStackSshSiteDriver  # noqa: E402
from tests.support import glance_peer, images  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.payloads import Payload  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
SITE = "site-b-ssh"


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sshd_pid(bed_dir: Path) -> int | None:
    for server in json.loads((bed_dir / "pids.json").read_text()):
        if server["name"] == "sshd":
            return int(server["pid"])
    return None


def host_cpu(bed_dir: Path) -> float:
    """CPU seconds of the bed's sshd's finished sessions (cutime + cstime of the
    listening sshd, which reaps them), once no session is left; 0 if unknown."""
    pid = _sshd_pid(bed_dir)
    if pid is None:
        return 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 10
    try:
        while children.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # cutime and cstime (fields 16 and 17 of proc_pid_stat(5)), counted after the name.
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def scp_copy(settings: OpenStackSshSite, source: Path, target: str) -> tuple[float, float]:
    """Wall and the ``scp`` child's CPU seconds."""
    argv = [
        "scp", "-q", "-B",
        "-P", str(settings.port),
        "-i", str(settings.key_file),
        "-o", f"UserKnownHostsFile={settings.known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        str(source),
        f"{settings.user}@{settings.host}:{target}",
    ]  # fmt: skip
    cpu, started = _children_cpu(), time.monotonic()
    subprocess.run(argv, check=True)
    return time.monotonic() - started, _children_cpu() - cpu


def receive_copy(
    settings: OpenStackSshSite, source: Path, sha512: str, *, openssh: bool = True
) -> tuple[float, float]:
    """Wall and CPU seconds of this process (every thread: paramiko's, the
    journal's) and of its children (``ssh``)."""
    driver = OpenStackSshSiteDriver(SITE, settings)
    if not openssh:
        driver.staging.openssh = None
    try:
        record = driver.create_record(RecordSpec(str(uuid.uuid4()), "bench", "raw", "bare"))
        cpu, started = _own_cpu() + _children_cpu(), time.monotonic()
        verified = driver.receive(record.id, Payload(path=source, sha512=sha512, size=None))
        elapsed = time.monotonic() - started
        cpu = _own_cpu() + _children_cpu() - cpu
        assert verified == sha512
        driver.remove(record.id)
        return elapsed, cpu
    finally:
        driver.close()


def migrate(bed: testbed_lib.Bed, size_mib: int, workdir: Path) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    image = images.random_qcow2(workdir / "migrate.qcow2", size_mib)
    site_a = glance_peer.connect("site-a")
    source_id = glance_peer.upload(site_a, image, name="bench-ssh")
    image.unlink()
    config = write_daemon_config(workdir, bed.sites_dir, concurrency=1)
    base = [sys.executable, "-m", "migratio", "--config", str(config)]
    submit = [*base, "submit", "--image", source_id, "--from", "site-a", "--to", SITE]
    migration_id = subprocess.run(submit, check=True, capture_output=True, text=True).stdout
    subprocess.run([*base, "run", "--until-idle"], check=True, stderr=subprocess.DEVNULL)
    shown = json.loads(
        subprocess.run(
            [*base, "show", "--json", migration_id.strip()],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert shown["state"] == "done", shown["error"]
    glance_peer.delete(glance_peer.connect("site-b"), shown["dest_image_id"])
    glance_peer.delete(site_a, source_id)
    stamps = [
        (row["to"], datetime.fromisoformat(row["at"].rstrip("Z"))) for row in shown["history"]
    ]
    spent = {
        f"{state}_seconds": (stamps[i + 1][1] - at).total_seconds()
        for i, (state, at) in enumerate(stamps[:-1])
    }
    spent["migration_seconds"] = (stamps[-1][1] - stamps[1][1]).total_seconds()
    return spent


def _median(results: list[dict[str, float]], key: str) -> float:
    return sorted(r[key] for r in results)[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--migrate", action="store_true")
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
            raw = yaml.safe_load((bed.sites_dir / f"{SITE}.yml").read_text())
            raw["staging_dir"] = str(scratch_dir / "staging")
            settings = OpenStackSshSite.model_validate(raw)
            source = images.random_raw(scratch_dir / "payload", args.size_mib)
            sha512 = hashlib.sha512(source.read_bytes()).hexdigest()
            size = source.stat().st_size
            target = scratch_dir / "scp-target"
            results = []
            for round_number in range(args.rounds):
                host = host_cpu(bed.dir)
                scp_seconds, scp_cpu = scp_copy(settings, source, str(target))
                scp_host = host_cpu(bed.dir) - host
                target.unlink()
                host = host_cpu(bed.dir)
                receive_seconds, receive_cpu = receive_copy(settings, source, sha512)
                receive_host = host_cpu(bed.dir) - host
                host = host_cpu(bed.dir)
                sftp_seconds, sftp_cpu = receive_copy(settings, source, sha512, openssh=False)
                sftp_host = host_cpu(bed.dir) - host
                gib = size / GiB
                results.append(
                    {
                        "scp_seconds": round(scp_seconds, 3),
                        "receive_seconds": round(receive_seconds, 3),
                        "scp_mib_s": round(size / MiB / scp_seconds, 1),
                        "receive_mib_s": round(size / MiB / receive_seconds, 1),
                        "sftp_seconds": round(sftp_seconds, 3),
                        "ratio": round(receive_seconds / scp_seconds, 3),
                        "sftp_ratio": round(sftp_seconds / scp_seconds, 3),
                        "scp_cpu_s_per_gib": round(scp_cpu / gib, 2),
                        "receive_cpu_s_per_gib": round(receive_cpu / gib, 2),
                        "scp_host_cpu_s_per_gib": round(scp_host / gib, 2),
                        "receive_host_cpu_s_per_gib": round(receive_host / gib, 2),
                        "sftp_cpu_s_per_gib": round(sftp_cpu / gib, 2),
                        "sftp_host_cpu_s_per_gib": round(sftp_host / gib, 2),
                    }
                )
                emit("ssh_vs_scp", size_mib=args.size_mib, round=round_number, **results[-1])
            ratios = sorted(r["ratio"] for r in results)
            sftp_ratios = sorted(r["sftp_ratio"] for r in results)
            print(
                f"size {size / MiB:.0f} MiB, {len(results)} rounds: time ratio receive/scp "
                f"median {ratios[len(ratios) // 2]:.3f} "
                f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f}), sftp/scp median "
                f"{sftp_ratios[len(ratios) // 2]:.3f} (min {sftp_ratios[0]:.3f}, max "
                f"{sftp_ratios[-1]:.3f}); CPU s/GiB median, "
                f"client+host: receive {_median(results, 'receive_cpu_s_per_gib')}"
                f"+{_median(results, 'receive_host_cpu_s_per_gib')}, "
                f"sftp {_median(results, 'sftp_cpu_s_per_gib')}"
                f"+{_median(results, 'sftp_host_cpu_s_per_gib')}, "
                f"scp {_median(results, 'scp_cpu_s_per_gib')}"
                f"+{_median(results, 'scp_host_cpu_s_per_gib')}",
                flush=True,
            )
            source.unlink()
            if args.migrate:
                migrated = migrate(bed, args.size_mib, scratch_dir / "migrate")
                emit("ssh_migrate", size_mib=args.size_mib, **migrated)
        finally:
            if not reuse:
                testbed_lib.down(bed.dir)


if __name__ == "__main__":
    main()
