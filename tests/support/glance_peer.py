"""Direct Glance access for tests: set up sources and inspect destinations
independently of migratio's own driver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
from openstack.connection import Connection

MIB = 1024 * 1024


def connect(cloud: str) -> Connection:
    return openstack.connect(cloud=cloud)


def upload(
    conn: Connection,
    path: Path,
    *,
    name: str,
    disk_format: str = "qcow2",
    container_format: str = "bare",
    **extra: Any,
) -> str:
    """Create an image from a file and wait until Glance says it is active."""
    image = conn.image.create_image(
        name=name,
        disk_format=disk_format,
        container_format=container_format,
        allow_duplicates=True,
        **extra,
    )
    with path.open("rb") as data:
        response = conn.image.put(
            f"/images/{image.id}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    if response.status_code >= 400:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:200]}")
    wait_active(conn, image.id)
    return str(image.id)


# What a real template carries; migrations must copy all of it.
TEMPLATE_PROPERTIES = {
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "os_distro": "ubuntu",
    "os_version": "24.04",
}
TEMPLATE_FIELDS: dict[str, Any] = {"architecture": "x86_64", "min_disk": 1, "min_ram": 512}


def upload_template(conn: Connection, path: Path, name: str) -> str:
    """An image with a template's fields and hw_*/os_* properties."""
    return upload(conn, path, name=name, **TEMPLATE_FIELDS, **TEMPLATE_PROPERTIES)


def wait_active(conn: Connection, image_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = get(conn, image_id)
        if image and image["status"] == "active":
            return image
        time.sleep(0.2)
    raise TimeoutError(f"image {image_id} not active")


def get(conn: Connection, image_id: str) -> dict[str, Any] | None:
    response = conn.image.get(f"/images/{image_id}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return dict(response.json())


def find(conn: Connection, **filters: str) -> list[dict[str, Any]]:
    """Images matching Glance's server-side property filters, any status."""
    found: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "100", **filters}
    while True:
        response = conn.image.get("/images", params=params)
        response.raise_for_status()
        body = response.json()
        found.extend(body["images"])
        if not body.get("next") or not body["images"]:
            return found
        params["marker"] = body["images"][-1]["id"]


def sha512_of_image(conn: Connection, image_id: str) -> str:
    import hashlib

    digest = hashlib.sha512()
    response = conn.image.get(f"/images/{image_id}/file", stream=True)
    response.raise_for_status()
    for chunk in response.iter_content(4 * MIB):
        digest.update(chunk)
    return digest.hexdigest()


def delete(conn: Connection, image_id: str) -> None:
    conn.image.delete(f"/images/{image_id}")


def chunks_of(conn: Connection, image_id: str) -> Iterator[bytes]:
    response = conn.image.get(f"/images/{image_id}/file", stream=True)
    response.raise_for_status()
    yield from response.iter_content(4 * MIB)
