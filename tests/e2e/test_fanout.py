"""Fan-out against the real test bed: one submit to site-b, site-b-raw and aws-a
reads the image from site-a's Glance once, counted on the wire by a proxy in
front of that Glance (``image_endpoint_override``), and every destination holds
the bytes, checked by checksum."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection

from migratio import operations
from migratio.config import load_settings
from tests.support import aws_peer, glance_peer, images, migratio_cli
from tests.support.daemon_config import write_daemon_config
from tests.support.freezing_proxy import DOWN, FreezingProxy

pytestmark = pytest.mark.testbed

SIZE_MIB = 4
# What one read costs on top of the image: Glance's JSON answers (describe, the
# dedup lookups) and HTTP headers: a few KiB per request.
OVERHEAD = 64 * 1024


def _proxied_config(testbed: Any, proxy: FreezingProxy, directory: Path) -> tuple[Path, Path]:
    """A daemon config whose site-a reads Glance through ``proxy``; returns it and
    the clouds.yaml to point ``OS_CLIENT_CONFIG_FILE`` at."""
    clouds = yaml.safe_load(Path(testbed.env["OS_CLIENT_CONFIG_FILE"]).read_text())
    entry = yaml.safe_load(yaml.safe_dump(clouds["clouds"]["site-a"]))
    entry["image_endpoint_override"] = proxy.url
    clouds["clouds"]["site-a-proxied"] = entry
    clouds_file = directory / "clouds.yaml"
    clouds_file.touch(mode=0o600)
    clouds_file.write_text(yaml.safe_dump(clouds))
    sites = directory / "sites"
    sites.mkdir()
    for site in ("site-b", "site-b-raw", "aws-a"):
        shutil.copy(testbed.dir / "sites" / f"{site}.yml", sites)
    site_a = yaml.safe_load((testbed.dir / "sites" / "site-a.yml").read_text())
    (sites / "site-a.yml").write_text(yaml.safe_dump({**site_a, "cloud": "site-a-proxied"}))
    return write_daemon_config(directory, sites, concurrency=3), clouds_file


def test_one_submit_reads_the_source_once_and_lands_everywhere(
    testbed: Any,
    proxy: FreezingProxy,
    site_a: Connection,
    site_b: Connection,
    tmp_path: Path,
) -> None:
    source_file = images.random_qcow2(tmp_path / "fanout.qcow2", SIZE_MIB)
    raw_file = images.as_raw(source_file, tmp_path / "fanout.raw")
    source_id = glance_peer.upload(site_a, source_file, name="fan-out", architecture="x86_64")
    config, clouds_file = _proxied_config(testbed, proxy, tmp_path)
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds_file)}
    # In-process (tests/unit/test_fanout_groups.py runs the command): one process less.
    ledger = migratio_cli.ledger_of(config)
    members = operations.submit_group(
        load_settings(config), ledger, source_id, "site-a", ("site-b", "site-b-raw", "aws-a")
    )

    migratio_cli.run_until_idle(config, env=env)

    read = proxy.moved(DOWN)
    size = source_file.stat().st_size
    print(f"fan-out to 3 sites: {read} bytes read from site-a's Glance for an image of {size}")
    assert size <= read <= size + OVERHEAD, f"read {read} bytes from site-a for {size}"
    ended = {m.dest_site: m for m in ledger.group_members(str(members[0].group_id))}
    for migration in ended.values():
        assert migration.state == "done", migration.last_error
        trail = [r.to_state for r in ledger.history(migration.id) if r.from_state != r.to_state]
        assert trail == ["queued", "exporting", "converting", "uploading", "registering", "done"]
    assert sorted(ended) == ["aws-a", "site-b", "site-b-raw"]
    # site-b takes qcow2 as it is: it followed the group's read as it arrived (a
    # tee through the spool); the two others needed the raw conversion, made once.
    streamed = [r.message for r in ledger.history(ended["site-b"].id)]
    assert any("streamed from the group's one read" in message for message in streamed)
    assert glance_peer.sha512_of_image(
        site_b, str(ended["site-b"].dest_image_id)
    ) == images.sha512_of(source_file)
    assert glance_peer.sha512_of_image(
        site_b, str(ended["site-b-raw"].dest_image_id)
    ) == images.sha512_of(raw_file)
    # aws-a took the same raw conversion site-b-raw did (one made for both): its
    # snapshot, block by block, is that raw disk.
    ec2 = aws_peer.client("ec2", str(testbed.env["MIGRATIO_MOTO_URL"]))
    (snapshot,) = aws_peer.snapshots_of(ec2, ended["aws-a"].id)
    ebs = aws_peer.client("ebs", str(testbed.env["MIGRATIO_MOTO_URL"]))
    rebuilt = tmp_path / "rebuilt.raw"
    aws_peer.rebuild_disk(ebs, snapshot["SnapshotId"], rebuilt, raw_file.stat().st_size)
    assert aws_peer.same_bytes(rebuilt, raw_file)
    work = config.parent / "work"
    assert not (work / "groups").exists() or not any((work / "groups").iterdir())
