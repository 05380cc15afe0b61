"""``migratio doctor`` against the test bed: healthy, and with one broken site of each kind."""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import paramiko
import pytest
import testbed_lib
import yaml

from tests.support import migratio_cli
from tests.support.daemon_config import write_daemon_config

pytestmark = pytest.mark.testbed

WRONG_PASSWORD = "not-the-password-3f9c2a"


def doctor(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, dict[str, str]], str]:
    """Exit status, results by check name, and everything printed."""
    done = migratio_cli.cli(config, "doctor", "--json", *args, check=False, env=env, timeout=180)
    assert done.returncode in (0, 1), done.stderr
    results = json.loads(done.stdout)
    assert all(set(item) == {"check", "status", "detail"} for item in results)
    names = [item["check"] for item in results]
    assert len(names) == len(set(names)), names
    return done.returncode, {item["check"]: item for item in results}, done.stdout + done.stderr


def statuses(results: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: item["status"] for name, item in results.items()}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A port that accepts connections (the kernel does, into the backlog) and
    never answers: a dead peer, not a refused one."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


@pytest.fixture
def upgraded_config(testbed: testbed_lib.Bed, tmp_path: Path) -> Path:
    config = write_daemon_config(tmp_path, testbed.dir / "sites")
    migratio_cli.cli(config, "db", "upgrade")
    return config


def _bed_secrets(bed_dir: Path) -> list[str]:
    clouds = yaml.safe_load((bed_dir / "clouds.yaml").read_text())
    return [entry["auth"]["password"] for entry in clouds["clouds"].values()]


def test_healthy_bed_passes(testbed: testbed_lib.Bed, upgraded_config: Path) -> None:
    code, results, printed = doctor(upgraded_config)
    assert code == 0, printed
    failed = {name: item["detail"] for name, item in results.items() if item["status"] == "fail"}
    assert failed == {}
    expected_ok = [
        "config",
        "ledger",
        "redis",
        "work dir",
        "qemu-img",
        *(f"site {site}: site file" for site in ("site-a", "site-b", "aws-a", "site-b-ssh")),
        *(
            f"site {site}: {check}"
            for site in ("site-a", "site-b", "site-b-raw")
            for check in (
                "clouds.yaml entry",
                "authentication",
                "image API",
                "list images",
                "create images",
            )
        ),
        *(
            f"site aws-a: {check}"
            for check in (
                "credentials",
                "EC2 endpoint",
                "permission ec2:RegisterImage",
                "permission ec2:DeregisterImage",
                "permission ec2:DeleteSnapshot",
                "permission ec2:DescribeImages",
            )
        ),
        *(
            f"site site-b-ssh: {check}"
            for check in ("host key", "login", "openstack CLI", "list images", "staging dir")
        ),
    ]
    assert {name: results[name]["status"] for name in expected_ok} == dict.fromkeys(
        expected_ok, "ok"
    )
    assert "image API v2." in results["site site-a: image API"]["detail"]
    assert "shared-credentials-file" in results["site aws-a: credentials"]["detail"]
    assert "schema at revision" in results["ledger"]["detail"]
    for secret in [*_bed_secrets(testbed.dir), "aws_secret_access_key"]:
        assert secret not in printed


def test_human_output_one_line_per_check(testbed: testbed_lib.Bed, upgraded_config: Path) -> None:
    done = migratio_cli.cli(upgraded_config, "doctor", check=False, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.split()[0] in ("ok", "warn", "fail") for line in lines[:-1])
    assert any(line.startswith("ok    site site-a: authentication: token for") for line in lines)
    assert lines[-1].endswith(" 0 fail")
    assert done.stderr == ""


def _broken_bed(bed_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The bed's sites plus one broken site of each kind; the env that finds them."""
    sites = tmp_path / "sites"
    shutil.copytree(bed_dir / "sites", sites)
    clouds = yaml.safe_load((bed_dir / "clouds.yaml").read_text())
    good = clouds["clouds"]["site-b"]
    clouds["clouds"]["wrong-password"] = {
        **good,
        "auth": {**good["auth"], "password": WRONG_PASSWORD},
    }
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(clouds))
    (sites / "os-bad.yml").write_text("type: openstack\ncloud: wrong-password\n")

    aws = yaml.safe_load((sites / "aws-a.yml").read_text())
    dead = {**aws, "endpoint_url": f"http://127.0.0.1:{_closed_port()}"}
    (sites / "aws-dead.yml").write_text(yaml.safe_dump(dead))
    (sites / "aws-noprofile.yml").write_text(yaml.safe_dump({**aws, "profile": "no-such-profile"}))

    bucket = f"doctor-{uuid.uuid4().hex}"  # the bed (and its moto) may be reused
    boto3.session.Session(profile_name=aws["profile"]).client(
        "s3", endpoint_url=aws["endpoint_url"], region_name=aws["region"]
    ).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": aws["region"]})
    imports = {**aws, "method": "import-snapshot", "bucket": bucket}
    (sites / "aws-import.yml").write_text(yaml.safe_dump(imports))
    (sites / "aws-nobucket.yml").write_text(yaml.safe_dump({**imports, "bucket": "no-such-bucket"}))

    ssh = yaml.safe_load((sites / "site-b-ssh.yml").read_text())
    (tmp_path / "empty_known_hosts").write_text("")
    (sites / "ssh-tofu.yml").write_text(
        yaml.safe_dump(
            {
                **ssh,
                "known_hosts": str(tmp_path / "empty_known_hosts"),
                "accept_unknown_host_key": True,
            }
        )
    )
    (sites / "ssh-unknown.yml").write_text(
        yaml.safe_dump({**ssh, "known_hosts": str(tmp_path / "empty_known_hosts")})
    )
    other = paramiko.Ed25519Key.from_private_key_file(ssh["key_file"])  # any other key
    address = f"[{ssh['host']}]:{ssh['port']}"
    (tmp_path / "other_known_hosts").write_text(
        f"{address} {other.get_name()} {other.get_base64()}\n"
    )
    (sites / "ssh-changed.yml").write_text(
        yaml.safe_dump({**ssh, "known_hosts": str(tmp_path / "other_known_hosts")})
    )
    return sites, {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}


def test_broken_sites_fail_each_with_its_reason(testbed: testbed_lib.Bed, tmp_path: Path) -> None:
    sites, env = _broken_bed(testbed.dir, tmp_path)
    config = write_daemon_config(tmp_path, sites)
    migratio_cli.cli(config, "db", "upgrade")
    code, results, printed = doctor(config, env=env)
    assert code == 1
    failed = {name: item["detail"] for name, item in results.items() if item["status"] == "fail"}
    assert set(failed) == {
        "site os-bad: authentication",
        "site aws-dead: EC2 endpoint",
        "site aws-noprofile: credentials",
        "site ssh-unknown: host key",
        "site ssh-changed: host key",
        "site aws-nobucket: bucket",
    }, failed
    assert "bucket no-such-bucket does not exist" in failed["site aws-nobucket: bucket"]
    assert results["site aws-import: bucket"]["status"] == "ok"
    # Trust on first use is the daemon's to do, never doctor's.
    tofu = results["site ssh-tofu: host key"]
    assert tofu["status"] == "warn"
    assert "doctor does not" in tofu["detail"]
    assert "site ssh-tofu: login" not in results
    assert "authentication failed (HTTP 401)" in failed["site os-bad: authentication"]
    assert "later checks of site os-bad not run" in failed["site os-bad: authentication"]
    assert "site os-bad: image API" not in results
    dead_url = yaml.safe_load((sites / "aws-dead.yml").read_text())["endpoint_url"]
    assert f"reach EC2 at {dead_url}" in failed["site aws-dead: EC2 endpoint"]
    assert "'no-such-profile' not found" in failed["site aws-noprofile: credentials"]
    assert "does not list" in failed["site ssh-unknown: host key"]
    assert (tmp_path / "empty_known_hosts").read_text() == ""  # nothing was accepted
    assert "CHANGED" in failed["site ssh-changed: host key"]
    assert "site ssh-unknown: login" not in results
    # The healthy sites are still checked, and pass.
    for name in (
        "site site-a: create images",
        "site aws-a: EC2 endpoint",
        "site site-b-ssh: openstack CLI",
    ):
        assert results[name]["status"] == "ok", results[name]
    assert WRONG_PASSWORD not in printed
    for secret in _bed_secrets(testbed.dir):
        assert secret not in printed


def test_broken_site_file_is_a_fail_line_naming_it(
    testbed: testbed_lib.Bed, tmp_path: Path
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    shutil.copy(testbed.dir / "sites" / "site-a.yml", sites)
    (sites / "broken.yml").write_text("type: openstack\ncloud: [site-a\n")
    (sites / "bad-region.yml").write_text("type: aws\nregion: Europe\n")
    config = write_daemon_config(tmp_path, sites)
    code, results, _ = doctor(config)
    assert code == 1
    broken = results["site broken: site file"]
    assert broken["status"] == "fail"
    assert str(sites / "broken.yml") in broken["detail"]
    assert "not valid YAML" in broken["detail"]
    region = results["site bad-region: site file"]
    assert region["status"] == "fail"
    assert f"{sites / 'bad-region.yml'}: region:" in region["detail"]
    # The valid site is checked all the same.
    assert results["site site-a: authentication"]["status"] == "ok"


def test_broken_daemon_config_is_a_fail_line(tmp_path: Path) -> None:
    config = tmp_path / "migratio.yml"
    config.write_text("name: site-a\nconcurrency: many\n")
    code, results, _ = doctor(config)
    assert code == 1
    assert results["config"]["status"] == "fail"
    assert f"{config}: concurrency:" in results["config"]["detail"]


def test_dead_peers_time_out(testbed: testbed_lib.Bed, tmp_path: Path, silent_peer: int) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    clouds = yaml.safe_load((testbed.dir / "clouds.yaml").read_text())
    good = clouds["clouds"]["site-a"]
    clouds["clouds"]["silent"] = {
        **good,
        "auth": {**good["auth"], "auth_url": f"http://127.0.0.1:{silent_peer}/v3"},
    }
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(clouds))
    (sites / "os-silent.yml").write_text("type: openstack\ncloud: silent\n")
    ssh = yaml.safe_load((testbed.dir / "sites" / "site-b-ssh.yml").read_text())
    (sites / "ssh-silent.yml").write_text(yaml.safe_dump({**ssh, "port": silent_peer}))
    config = write_daemon_config(tmp_path, sites)
    started = time.monotonic()
    code, results, _ = doctor(
        config, "--timeout", "2", env={"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    )
    elapsed = time.monotonic() - started
    assert code == 1
    for name in ("site os-silent: authentication", "site ssh-silent: host key"):
        assert results[name]["status"] == "fail"
        assert results[name]["detail"].startswith("timed out after 2 s"), results[name]
    assert elapsed < 30
