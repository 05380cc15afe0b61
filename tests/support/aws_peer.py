"""The test bed's moto as tests see it, independently of migratio's AWS driver:
boto3 clients, images with data at scattered offsets, and disks rebuilt from
snapshot blocks."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import requests
import yaml

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 512 * 1024
REGION = "eu-west-1"


def client(service: str, endpoint_url: str) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": 2},
            s3={"addressing_style": "path"},
            max_pool_connections=16,
        ),
    )


def reset(moto_url: str) -> None:
    """Drop everything moto holds (snapshot blocks live in its memory); only the
    AWS tests use the bed's moto."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=30).raise_for_status()


def write_site(sites_dir: Path, site_id: str, endpoint_url: str, **settings: object) -> Path:
    """An AWS site file like the bed's ``aws-a``, with other settings."""
    path = sites_dir / f"{site_id}.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "type": "aws",
                "region": REGION,
                "endpoint_url": endpoint_url,
                "profile": "migratio-testbed",
                **settings,
            }
        ),
        encoding="utf-8",
    )
    return path


def scattered_qcow2(
    path: Path, *, virtual_size: int = GIB, data_mib: int = 40, seed: int = 4
) -> Path:
    """A qcow2 of ``virtual_size`` with ``data_mib`` MiB of random data at scattered,
    unaligned offsets: the first and last bytes, pieces straddling 512 KiB block
    borders, small islands and runs of whole MiBs; the rest never written."""
    rng = random.Random(seed)
    raw = path.with_suffix(".raw")
    with raw.open("wb") as handle:
        handle.truncate(virtual_size)
        fd = handle.fileno()
        os.pwrite(fd, os.urandom(4096), 0)
        os.pwrite(fd, os.urandom(4096), virtual_size - 4096)
        written = 8192
        while written < data_mib * MIB:
            length = rng.choice((4096, 65536, 300_000, MIB, 3 * MIB))
            offset = rng.randrange(0, virtual_size - length) & ~511
            os.pwrite(fd, os.urandom(length), offset)
            written += length
        # Explicit zeros written as data: never sent either.
        os.pwrite(fd, bytes(2 * MIB), virtual_size // 2)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return path


@dataclass(frozen=True)
class TwoVersions:
    """Two raw disks of one template: the second is the first with some blocks
    changed (a few KiB rewritten in each), some zeroed and some added."""

    first: Path
    second: Path
    changed: frozenset[int]
    zeroed: frozenset[int]
    added: frozenset[int]

    @property
    def differing(self) -> frozenset[int]:
        return self.changed | self.zeroed | self.added


def two_versions(
    directory: Path,
    *,
    virtual_size: int,
    data_mib: int,
    changed_mib: int,
    zeroed_mib: int,
    added_mib: int,
    seed: int = 13,
) -> TwoVersions:
    """Version 1: ``data_mib`` MiB of random 512 KiB blocks scattered over the disk,
    the rest never written; version 2: that, with blocks changed, zeroed (written
    as zeros) and added, as many MiB of each as asked."""
    rng = random.Random(seed)
    per_mib = MIB // BLOCK
    data = rng.sample(range(virtual_size // BLOCK), data_mib * per_mib)
    changed = rng.sample(data, changed_mib * per_mib)
    zeroed = rng.sample(sorted(set(data) - set(changed)), zeroed_mib * per_mib)
    free = sorted(set(range(virtual_size // BLOCK)) - set(data))
    added = rng.sample(free, added_mib * per_mib)
    first, second = directory / "version1.raw", directory / "version2.raw"
    with first.open("wb") as handle:
        handle.truncate(virtual_size)
        for index in sorted(data):
            os.pwrite(handle.fileno(), os.urandom(BLOCK), index * BLOCK)
    subprocess.run(["cp", "--sparse=always", str(first), str(second)], check=True)
    with second.open("r+b") as handle:
        fd = handle.fileno()
        for index in changed:
            os.pwrite(fd, os.urandom(4096), index * BLOCK + rng.randrange(0, BLOCK - 4096))
        for index in zeroed:
            os.pwrite(fd, bytes(BLOCK), index * BLOCK)
        for index in added:
            os.pwrite(fd, os.urandom(4096), index * BLOCK + rng.randrange(0, BLOCK - 4096))
    return TwoVersions(first, second, frozenset(changed), frozenset(zeroed), frozenset(added))


def as_qcow2(raw: Path) -> Path:
    target = raw.with_suffix(".qcow2")
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target)], check=True
    )
    return target


def nonzero_blocks(raw: Path) -> int:
    """How many 512 KiB blocks of a raw image hold a non-zero byte (read it all)."""
    count = 0
    zeros = bytes(BLOCK)
    with raw.open("rb") as handle:
        while block := handle.read(BLOCK):
            count += block != zeros[: len(block)]
    return count


def snapshot_blocks(ebs: Any, snapshot_id: str) -> Iterator[tuple[int, str]]:
    """(index, token) of every block the snapshot holds, per ListSnapshotBlocks."""
    token: str | None = None
    while True:
        page = ebs.list_snapshot_blocks(
            SnapshotId=snapshot_id, **({"NextToken": token} if token else {})
        )
        for block in page.get("Blocks", []):
            yield int(block["BlockIndex"]), str(block["BlockToken"])
        token = page.get("NextToken")
        if not token:
            return


def rebuild_disk(ebs: Any, snapshot_id: str, target: Path, size: int) -> int:
    """Lay the snapshot's blocks into a zero-filled file of ``size``; return the count."""
    count = 0
    with target.open("wb") as out:
        out.truncate(size)
        for index, token in snapshot_blocks(ebs, snapshot_id):
            data = ebs.get_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token
            )["BlockData"].read()
            assert len(data) == BLOCK, f"block {index} has {len(data)} bytes"
            offset = index * BLOCK
            os.pwrite(out.fileno(), data[: max(0, min(BLOCK, size - offset))], offset)
            count += 1
    return count


def same_bytes(first: Path, second: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(first), str(second)], check=False).returncode == 0


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def snapshots_of(ec2: Any, migration_id: str) -> list[dict[str, Any]]:
    return list(
        ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": "tag:migratio_migration_id", "Values": [migration_id]}],
        )["Snapshots"]
    )


def images_of(ec2: Any, **wanted: str) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{key}", "Values": [value]} for key, value in wanted.items()]
    return list(ec2.describe_images(Owners=["self"], Filters=filters)["Images"])
