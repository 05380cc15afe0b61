"""Benchmark: a template's new version to AWS sends only the blocks that changed.

Version 1 of a template (by default 2 GiB virtual, 256 MiB of data in random
512 KiB blocks) is migrated by a real daemon from the bed's Glance site-a to
``aws-a``; then version 2 (its ``base_image_ref`` is version 1; 8 MiB of its
blocks changed, 4 MiB zeroed, 4 MiB added). ``aws-a`` here is the bed's moto
behind the tests' front (``tests/support/moto_front.py``), which counts
PutSnapshotBlock calls on the wire, with its EBS parent EMULATION (moto ignores
ParentSnapshotId), through which the child snapshot is rebuilt and compared
with version 2's raw disk byte for byte. Then version 1's AMI and snapshot are
deleted and a third image of the same bytes, naming version 1 as its base
(``submit --base``), is migrated: a full upload, with a note in its trail.

It reports, per migration: blocks put (on the wire), wall time exporting ->
done and uploading alone (from the ledger's history); the ratio of blocks put
for version 2 over its differing blocks (goal <= 1.05), the rebuild check, the
AMI's version tags and the fallback's note.

    python3 bench/incremental.py [--virtual-mib 2048] [--data-mib 256]
        [--changed-mib 8] [--zeroed-mib 4] [--added-mib 4]
    python3 bench/incremental.py --tiny     # 128 MiB virtual, 16 MiB data, 2/1/1 MiB

moto is reset at the end (its snapshot blocks live in its RAM): use a test bed
of your own, $MIGRATIO_TESTBED_DIR when it points at a running bed, else one
started (and stopped) here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench import daemon_run  # noqa: E402
from bench.rounds import emit  # noqa: E402
from migratio import operations  # noqa: E402
from migratio.config import load_settings  # noqa: E402
from tests.support import aws_peer, glance_peer  # noqa: E402
from tests.support.daemon_config import write_daemon_config  # noqa: E402
from tests.support.ebs_parent_emulation import EbsParentEmulation  # noqa: E402
from tests.support.moto_front import MotoFront  # noqa: E402

MIB = 1 << 20
SITE = "aws-a"


def migrate(config: Path, image_id: str, base: str | None = None) -> dict[str, Any]:
    """One migration by a real daemon (``run --until-idle``); as ``show`` prints it,
    with its wall and uploading seconds."""
    settings = load_settings(config)
    ledger = operations.open_ledger(settings)
    try:
        migration_id = operations.submit(settings, ledger, image_id, "site-a", SITE, base).id
    finally:
        ledger.engine.dispose()
    run = daemon_run.run_until_idle(config)
    [shown] = daemon_run.show(config, [migration_id])
    assert shown["state"] == "done", shown["error"]
    stamps = {row["to"]: datetime.fromisoformat(row["at"].rstrip("Z")) for row in shown["history"]}
    shown["wall"] = (stamps["done"] - stamps["exporting"]).total_seconds()
    shown["uploading_seconds"] = (stamps["registering"] - stamps["uploading"]).total_seconds()
    shown["daemon_peak_rss_mib"] = run.peak_rss_mib
    return shown


def snapshot_of(ec2: Any, migration_id: str) -> str:
    (snapshot,) = aws_peer.snapshots_of(ec2, migration_id)
    return str(snapshot["SnapshotId"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual-mib", type=int, default=2048)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--changed-mib", type=int, default=8)
    parser.add_argument("--zeroed-mib", type=int, default=4)
    parser.add_argument("--added-mib", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="128 MiB virtual, 16 MiB data")
    args = parser.parse_args()
    if args.tiny:
        args.virtual_mib, args.data_mib = 128, 16
        args.changed_mib, args.zeroed_mib, args.added_mib = 2, 1, 1
    with tempfile.TemporaryDirectory(prefix="migratio-bench-") as scratch:
        scratch_dir = Path(scratch)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed = testbed_lib.up(Path(reuse) if reuse else scratch_dir / "bed")
        os.environ.update(bed.env)
        moto_url = bed.env["MIGRATIO_MOTO_URL"]
        front = MotoFront(moto_url).start()
        try:
            run(args, scratch_dir, bed, front)
        finally:
            front.stop()
            aws_peer.reset(moto_url)
            if not reuse:
                testbed_lib.down(bed.dir)


def run(args: argparse.Namespace, scratch: Path, bed: Any, front: MotoFront) -> None:
    emulation = EbsParentEmulation(front)
    versions = aws_peer.two_versions(
        scratch,
        virtual_size=args.virtual_mib * MIB,
        data_mib=args.data_mib,
        changed_mib=args.changed_mib,
        zeroed_mib=args.zeroed_mib,
        added_mib=args.added_mib,
    )
    sites = scratch / "sites"
    sites.mkdir()
    (sites / "site-a.yml").write_bytes((bed.dir / "sites" / "site-a.yml").read_bytes())
    aws_peer.write_site(sites, SITE, front.url)
    (scratch / "daemon").mkdir()
    config = write_daemon_config(scratch / "daemon", sites, concurrency=1)
    site_a = glance_peer.connect("site-a")
    ec2 = aws_peer.client("ec2", front.url)
    ebs = aws_peer.client("ebs", front.url)
    images: list[str] = []

    def upload(raw: Path, name: str, **extra: str) -> str:
        qcow2 = aws_peer.as_qcow2(raw)
        images.append(glance_peer.upload(site_a, qcow2, name=name, architecture="x86_64", **extra))
        qcow2.unlink()
        return images[-1]

    try:
        first_id = upload(versions.first, "bench-incremental v1")
        first = migrate(config, first_id)
        first_snapshot = snapshot_of(ec2, first["id"])
        second_id = upload(versions.second, "bench-incremental v2", base_image_ref=first_id)
        second = migrate(config, second_id)
        second_snapshot = snapshot_of(ec2, second["id"])

        rebuilt = scratch / "rebuilt.raw"
        aws_peer.rebuild_disk(ebs, second_snapshot, rebuilt, args.virtual_mib * MIB)
        identical = aws_peer.same_bytes(rebuilt, versions.second)
        rebuilt.unlink()
        (ami,) = ec2.describe_images(ImageIds=[second["dest_image_id"]])["Images"]
        tags = aws_peer.tags(ami)

        ec2.deregister_image(ImageId=first["dest_image_id"])
        ec2.delete_snapshot(SnapshotId=first_snapshot)
        third_id = upload(versions.second, "bench-incremental v2 again")
        third = migrate(config, third_id, base=first_id)
        third_snapshot = snapshot_of(ec2, third["id"])
        note = [
            row["message"] for row in third["history"] if row["message"].startswith("base version")
        ]
    finally:
        for image_id in images:
            glance_peer.delete(site_a, image_id)

    differing = len(versions.differing)
    puts = {
        "v1": sum(front.puts_for(first_snapshot).values()),
        "v2": sum(front.puts_for(second_snapshot).values()),
        "v2_parent_deleted": sum(front.puts_for(third_snapshot).values()),
    }
    figures = {
        "virtual_mib": args.virtual_mib,
        "data_mib": args.data_mib,
        "changed_blocks": len(versions.changed),
        "zeroed_blocks": len(versions.zeroed),
        "added_blocks": len(versions.added),
        "differing_blocks": differing,
        "nonzero_blocks_v1": aws_peer.nonzero_blocks(versions.first),
        "nonzero_blocks_v2": aws_peer.nonzero_blocks(versions.second),
        **{f"blocks_put_{name}": count for name, count in puts.items()},
        "put_ratio_v2": puts["v2"] / differing,
        "wall_v1": first["wall"],
        "wall_v2": second["wall"],
        "wall_v2_parent_deleted": third["wall"],
        "uploading_v1": first["uploading_seconds"],
        "uploading_v2": second["uploading_seconds"],
        "uploading_v2_parent_deleted": third["uploading_seconds"],
        "child_identical": identical,
        "start_parents": [p or "" for p in emulation.starts],
        "ami_source_uuid": tags.get("source_uuid") == second_id,
        "ami_base_source_uuid": tags.get("migratio_base_source_uuid") == first_id,
        "ami_base_ami": tags.get("migratio_base_ami") == first["dest_image_id"],
        "fallback_note": note[0] if note else "",
    }
    emit("incremental", **figures)
    report(figures, tags)


def report(figures: dict[str, Any], tags: dict[str, str]) -> None:
    f = figures
    print(
        f"\n{f['virtual_mib']} MiB virtual, {f['data_mib']} MiB of data; version 2: "
        f"{f['changed_blocks']} blocks changed, {f['zeroed_blocks']} zeroed, "
        f"{f['added_blocks']} added ({f['differing_blocks']} differ)"
    )
    print(f"{'migration':<24} {'blocks put':>10} {'wall s':>8} {'uploading s':>12}")
    for name, key in (("v1 (full)", "v1"), ("v2 (incremental)", "v2")):
        print(
            f"{name:<24} {f[f'blocks_put_{key}']:>10} {f[f'wall_{key}']:>8.2f} "
            f"{f[f'uploading_{key}']:>12.2f}"
        )
    print(
        f"{'v2, parent deleted':<24} {f['blocks_put_v2_parent_deleted']:>10} "
        f"{f['wall_v2_parent_deleted']:>8.2f} {f['uploading_v2_parent_deleted']:>12.2f}"
    )
    print(
        f"blocks put for v2 / differing blocks: {f['put_ratio_v2']:.3f} (goal <= 1.05)\n"
        f"child rebuilt through the emulation == version 2's raw disk: {f['child_identical']}\n"
        f"AMI tags: source_uuid={tags.get('source_uuid')} "
        f"migratio_base_source_uuid={tags.get('migratio_base_source_uuid')} "
        f"migratio_base_ami={tags.get('migratio_base_ami')} "
        f"migratio_base_record={tags.get('migratio_base_record')}\n"
        f"parent deleted: {f['blocks_put_v2_parent_deleted']} blocks put "
        f"(v2 has {f['nonzero_blocks_v2']} non-zero); note: {f['fallback_note']}"
    )


if __name__ == "__main__":
    main()
