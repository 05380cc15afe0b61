"""Second half of ``support/demo``: upload a sample image to site-a, migrate it, show it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import openstack


def make_sample(directory: Path) -> Path:
    """A 32 MiB qcow2 with some written data, the way a real template looks."""
    raw = directory / "sample.raw"
    with raw.open("wb") as out:
        for block in range(32):
            out.write(os.urandom(512 * 1024) + bytes(512 * 1024) if block % 2 else bytes(1 << 20))
    image = directory / "sample.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True
    )
    return image


def upload(image: Path) -> str:
    conn = openstack.connect(cloud="site-a")
    record = conn.image.create_image(
        name="demo template (Ubuntu-like)",
        disk_format="qcow2",
        container_format="bare",
        os_distro="ubuntu",
        hw_disk_bus="scsi",
    )
    with image.open("rb") as data:
        conn.image.put(
            f"/images/{record.id}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ).raise_for_status()
    return str(record.id)


def migratio(*args: str) -> str:
    print(f"$ migratio {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "migratio", *args], check=True, stdout=subprocess.PIPE, text=True
    )
    print(result.stdout, end="", flush=True)
    return result.stdout.strip()


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        image_id = upload(make_sample(Path(scratch)))
    print(f"uploaded sample image {image_id} to site-a")
    migration_id = migratio("submit", "--image", image_id, "--from", "site-a", "--to", "site-b")
    migratio("run", "--until-idle")
    migratio("status")
    migratio("show", migration_id)
    print(
        f"\nThe test bed is still running: . {sys.argv[1]}/env to use it, "
        f"support/testbed/testbed down {sys.argv[1]} to stop it."
    )


if __name__ == "__main__":
    main()
