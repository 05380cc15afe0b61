"""The test bed itself: two independent clouds (a Keystone and a Glance each)
where migratio is a plain project member, and start_postgres gives a usable
private PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy
import testbed_lib
import yaml  # conftest puts support/testbed on sys.path
from keystoneauth1.identity.base import BaseIdentityPlugin
from openstack.config import OpenStackConfig
from openstack.connection import Connection

from tests.support import glance_peer

# What migratio sets on the images it creates; Glance must accept them as-is.
CUSTOM_PROPERTIES = {
    "hw_disk_bus": "scsi",
    "os_distro": "ubuntu",
    "migratio_migration_id": "0d3c7f7e-test",
}


def connect(bed: testbed_lib.Bed, site: str, clouds_yaml: Path | None = None) -> Connection:
    # Only the bed's clouds.yaml: OS_* variables of the caller must not leak in.
    files = [str(clouds_yaml or bed.clouds_yaml)]
    config = OpenStackConfig(config_files=files, load_envvars=False)
    return Connection(config=config.get_one(cloud=site))


@pytest.fixture(scope="module")
def site_a(testbed: testbed_lib.Bed) -> Iterator[Connection]:
    conn = connect(testbed, "site-a")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def site_b(testbed: testbed_lib.Bed) -> Iterator[Connection]:
    conn = connect(testbed, "site-b")
    yield conn
    conn.close()


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.mark.testbed
def test_each_site_is_its_own_cloud_where_migratio_is_a_member(
    testbed: testbed_lib.Bed, site_a: Connection, site_b: Connection
) -> None:
    assert testbed.keystone_urls["site-a"] != testbed.keystone_urls["site-b"]
    assert testbed.keystone_url == testbed.keystone_urls["site-a"]
    for site, conn in (("site-a", site_a), ("site-b", site_b)):
        endpoint = conn.session.get_endpoint(service_type="image", region_name=site)
        assert endpoint is not None
        assert endpoint.startswith(testbed.glance_urls[site])
        identity = conn.session.get_endpoint(service_type="identity")
        assert identity is not None and identity.startswith(testbed.keystone_urls[site])
        assert isinstance(conn.session.auth, BaseIdentityPlugin)
        access = conn.session.auth.get_access(conn.session)
        roles = access.role_names or []
        assert "member" in roles and "admin" not in roles
        assert access.project_name == "migratio"
    assert testbed.glance_urls["site-a"] != testbed.glance_urls["site-b"]
    # Own users, own tokens: site-a's token means nothing to site-b's Glance.
    images_b = f"{testbed.glance_urls['site-b']}/v2/images"
    for token, status in ((site_a.session.get_token(), 401), (site_b.session.get_token(), 200)):
        assert token is not None
        answer = requests.get(images_b, headers={"X-Auth-Token": token}, timeout=30)
        assert answer.status_code == status
    env = (testbed.dir / "env").read_text()
    assert env.count("export ") == len(testbed.env)
    for site in ("SITE_A", "SITE_B"):
        assert f"MIGRATIO_KEYSTONE_{site}_URL=" in env and f"MIGRATIO_GLANCE_{site}_URL=" in env
    admin_clouds = Path(testbed.env["MIGRATIO_TESTBED_ADMIN_CLOUDS"])
    for private in (testbed.clouds_yaml, admin_clouds):
        assert private.stat().st_mode & 0o077 == 0


@pytest.mark.testbed
def test_what_glance_keeps_for_admins_is_refused_to_migratio(
    testbed: testbed_lib.Bed, site_a: Connection, qcow2: Path
) -> None:
    """Public visibility is the operator's (Glance's publicize_image policy): the
    member account gets a clear 403; the site's admin may."""
    refused = site_a.image.post(
        "/images",
        json={"name": "testbed-public", "disk_format": "qcow2", "container_format": "bare",
              "visibility": "public"},
        raise_exc=False,
    )  # fmt: skip
    assert refused.status_code == 403, refused.text
    assert "publicize_image" in refused.text
    image_id = glance_peer.upload(site_a, qcow2, name="testbed-member-image")
    operator = connect(testbed, "site-a", Path(testbed.env["MIGRATIO_TESTBED_ADMIN_CLOUDS"]))
    try:
        response = operator.image.patch(
            f"/images/{image_id}",
            json=[{"op": "replace", "path": "/visibility", "value": "public"}],
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )
        assert response.status_code == 200 and response.json()["visibility"] == "public"
    finally:
        operator.image.delete(f"/images/{image_id}")
        operator.close()


@pytest.mark.testbed
def test_upload_hash_isolation_and_property_filter(
    site_a: Connection, site_b: Connection, qcow2: Path
) -> None:
    marker = uuid.uuid4().hex
    image = site_a.image.create_image(
        name=f"testbed-{marker}",
        disk_format="qcow2",
        container_format="bare",
        allow_duplicates=True,
        meta={"foo": "bar", "source_uuid": marker, **CUSTOM_PROPERTIES},
    )
    try:
        with qcow2.open("rb") as data:
            response = site_a.image.put(
                f"/images/{image.id}/file",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        assert response.status_code == 204, response.text

        uploaded = site_a.image.get_image(image.id)
        assert uploaded.status == "active"
        assert uploaded.hash_algo == "sha512"
        assert uploaded.hash_value == hashlib.sha512(qcow2.read_bytes()).hexdigest()
        # Raw JSON: openstacksdk maps some keys (hw_disk_bus) to attributes, others
        # into .properties; Glance stores them all alike.
        stored = site_a.image.get(f"/images/{image.id}").json()
        assert stored["source_uuid"] == marker
        for key, value in CUSTOM_PROPERTIES.items():
            assert stored[key] == value

        assert site_b.image.find_image(image.id) is None

        # Glance filters on custom properties; openstacksdk's images() would
        # silently drop the unknown filter, hence the raw request.
        matching = site_a.image.get("/images", params={"foo": "bar"}).json()["images"]
        assert image.id in {i["id"] for i in matching}
        assert all(i["foo"] == "bar" for i in matching)
        other = site_a.image.get("/images", params={"foo": marker}).json()["images"]
        assert image.id not in {i["id"] for i in other}
    finally:
        site_a.image.delete_image(image.id, ignore_missing=True)
    assert site_a.image.find_image(image.id) is None


@pytest.mark.postgres
def test_start_postgres_gives_a_database_sqlalchemy_can_use(tmp_path: Path) -> None:
    url = testbed_lib.start_postgres(tmp_path)
    try:
        assert url.startswith("postgresql+psycopg://") and url.endswith("/migratio")
        assert testbed_lib.start_postgres(tmp_path) == url  # already running: same cluster
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()
    finally:
        testbed_lib.stop_postgres(tmp_path)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        sqlalchemy.create_engine(url).connect()


@pytest.mark.testbed
def test_a_stopped_postgres_kept_comes_back_on_its_port_with_its_data(tmp_path: Path) -> None:
    url = testbed_lib.start_postgres(tmp_path)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
            )
        testbed_lib.stop_postgres(tmp_path, keep=True)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            engine.connect()
        assert testbed_lib.start_postgres(tmp_path) == url
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT n FROM kept")).scalar() == 7
    finally:
        engine.dispose()
        testbed_lib.stop_postgres(tmp_path)


@pytest.mark.testbed
def test_stopping_sshd_ends_its_open_sessions(testbed: testbed_lib.Bed) -> None:
    """sshd's sessions leave its process group; a stopped peer must not keep them."""
    ssh_dir = testbed.dir / "sshd"
    port = yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())["port"]
    session = subprocess.Popen(
        [
            "ssh", "-i", str(ssh_dir / "client_ed25519_key"),
            "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}", "-o", "BatchMode=yes",
            "-p", str(port), "root@127.0.0.1", "echo up; sleep 60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert session.stdout is not None and session.stdout.readline() == b"up\n"
        testbed_lib.stop_service(testbed.dir, "sshd")
        assert session.wait(15) != 0  # cut, not finished
    finally:
        session.kill()
        session.wait()
        testbed_lib.start_service(testbed.dir, "sshd")
