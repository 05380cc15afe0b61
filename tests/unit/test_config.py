"""Configuration: valid files load, broken ones give one line naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from migratio.config import load_settings
from migratio.errors import ConfigError
from migratio.site_settings import OpenStackSite

ROOT = Path(__file__).resolve().parents[2]
KEY = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _write(directory: Path, config: str, sites: dict[str, str]) -> Path:
    (directory / "sites").mkdir()
    for name, text in sites.items():
        (directory / "sites" / name).write_text(text, encoding="utf-8")
    path = directory / "migratio.yml"
    path.write_text(config, encoding="utf-8")
    return path


def test_example_configs_are_valid(tmp_path: Path) -> None:
    sites = {
        "site-a.yml": (ROOT / "config/sites/site-a.example.yml").read_text(),
        "site-b.yml": (ROOT / "config/sites/site-b.example.yml").read_text(),
    }
    example = (ROOT / "config/migratio.example.yml").read_text()
    path = _write(tmp_path, example.replace("/var/lib/migratio", str(tmp_path / "w")), sites)
    settings = load_settings(path)
    assert settings.daemon.name == "site-a"
    assert settings.daemon.ledger_url == f"sqlite:///{tmp_path / 'w' / 'ledger.sqlite'}"
    assert settings.daemon.sites_dir == tmp_path / "sites"
    site_b, site_a = settings.site("site-b").settings, settings.site("site-a").settings
    assert isinstance(site_b, OpenStackSite) and site_b.disk_format == "raw"
    assert isinstance(site_a, OpenStackSite) and site_a.disk_format == "keep"


@pytest.mark.parametrize(
    ("config", "site", "expected"),
    [
        (
            "name: a\nconcurrency: 0\n",
            "type: openstack\ncloud: x\n",
            "migratio.yml: concurrency: Input should be greater than or equal to 1",
        ),
        ("name: 'bad name!'\n", "type: openstack\ncloud: x\n", "migratio.yml: name: "),
        (
            "name: a\nsurprise: 1\n",
            "type: openstack\ncloud: x\n",
            "migratio.yml: surprise: Extra inputs are not permitted",
        ),
        ("name: a\n", "type: openstack\n", "site-x.yml: cloud: Field required"),
        (
            "name: a\n",
            "type: openstack\ncloud: x\ndisk_format: vhd\n",
            "site-x.yml: disk_format: Input should be 'keep', 'raw' or 'qcow2'",
        ),
        ("name: a\n", "type: carrier-pigeon\n", "site-x.yml: type: "),
        (
            "name: a\n",
            "type: openstack\ncloud: [unclosed\n",
            "site-x.yml: line 3: is not valid YAML",
        ),
        ("name: a\n", "- a list\n", "site-x.yml: must be a YAML mapping"),
        ("name: a\n", "type: aws\nregion: mars-north-9x\n", "site-x.yml: region: "),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\nmethod: import-snapshot\n",
            "needs an S3 'bucket'",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\naws_secret_access_key: x\n",
            "site-x.yml: aws_secret_access_key: secrets do not belong in site files",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\nendpoint_url: ftp://x\n",
            "site-x.yml: endpoint_url: ",
        ),
        (
            "name: a\n",
            "type: openstack-ssh\nhost: h\nuser: u\ncloud: c\n",
            "site-x.yml: key_file: Field required",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\nkms_key_id: alias/mine\n",
            "ebs-direct needs a KMS key ARN",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\nshare_with: ['12345', '210987654321']\n",
            "site-x.yml: share_with: Value error, '12345' is neither a 12-digit account id",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\nencrypted: true\nshare_with: ['210987654321']\n",
            "share_with on an encrypted site needs a customer managed kms_key_id",
        ),
        (
            "name: a\n",
            f"type: aws\nregion: eu-west-1\nkms_key_id: {KEY}\nshare_with: ['210987654321']\n"
            "copy_to_regions: [us-east-1]\n",
            "share_with on an encrypted site needs copy_kms_key_ids: ['us-east-1']",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\ncopy_to_regions: [us-east-1, eu-west-1]\n",
            "copy_to_regions names the site's own region 'eu-west-1'",
        ),
        (
            "name: a\n",
            "type: aws\nregion: eu-west-1\ncopy_to_regions: [mars-1]\n",
            "site-x.yml: copy_to_regions: ",
        ),
    ],
)
def test_invalid_config_names_file_and_key(
    tmp_path: Path, config: str, site: str, expected: str
) -> None:
    path = _write(tmp_path, config + f"work_dir: {tmp_path}\n", {"site-x.yml": site})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_daemon_with_broken_site_file_refuses_to_start(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"name: site-a\nwork_dir: {tmp_path / 'w'}\n",
        {"site-b.yml": "type: openstack\ncloud: site-b\ndisk_format: vhdx\n"},
    )
    result = subprocess.run(
        [sys.executable, "-m", "migratio", "--config", str(path), "run", "--until-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "site-b.yml" in lines[0] and "disk_format" in lines[0]
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "migratio", "--config", str(tmp_path / "nope.yml"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    missing = tmp_path / "nope.yml"
    expected = f"migratio: config error: {missing}: cannot read: No such file or directory"
    assert result.stderr.strip() == expected
