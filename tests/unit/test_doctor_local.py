"""The doctor's local checks: config and site files, the work dir, the ledger, tools."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from migratio.config import DaemonConfig, Site, load_site
from migratio.doctor import config_files, ledger, qemu_img, redis_server, work_dir
from migratio.doctor.result import Status
from migratio.ledger.database import make_engine, upgrade


def _config(directory: Path, sites: dict[str, str], extra: str = "") -> Path:
    (directory / "sites").mkdir()
    for name, text in sites.items():
        (directory / "sites" / name).write_text(text, encoding="utf-8")
    path = directory / "migratio.yml"
    path.write_text(f"name: site-a\nwork_dir: {directory / 'work'}\n{extra}", encoding="utf-8")
    return path


def test_each_site_file_is_its_own_line(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {
            "site-a.yml": "type: openstack\ncloud: a\n",
            "broken.yml": "type: openstack\ncloud: [a\n",
            "leaky.yml": "type: openstack\ncloud: a\npassword: x\n",
            "bad name!.yml": "type: openstack\ncloud: a\n",
            "site-c.example.yml": "not: checked\n",
        },
    )
    loaded = config_files.load(path)
    lines = {item.check: (item.status, item.detail) for item in loaded.results}
    sites = tmp_path / "sites"
    assert lines == {
        "config": (Status.OK, f"{path}: daemon site-a, 4 site files in {sites}"),
        "site bad name!: site file": (
            Status.FAIL,
            f"{sites / 'bad name!.yml'}: (file name): is not a valid site id",
        ),
        "site broken: site file": (
            Status.FAIL,
            f"{sites / 'broken.yml'}: line 3: is not valid YAML",
        ),
        "site leaky: site file": (
            Status.FAIL,
            f"{sites / 'leaky.yml'}: password: secrets do not belong in site files; use "
            "clouds.yaml or an AWS profile / the default credential chain",
        ),
        "site site-a: site file": (Status.OK, f"{sites / 'site-a.yml'}: openstack"),
    }
    assert [site.id for site in loaded.sites] == ["site-a"]


def test_a_broken_daemon_config_is_one_failed_line(tmp_path: Path) -> None:
    path = tmp_path / "migratio.yml"
    path.write_text("name: site a\n", encoding="utf-8")
    loaded = config_files.load(path)
    assert loaded.daemon is None
    [line] = loaded.results
    assert (line.check, line.status) == ("config", Status.FAIL)
    assert line.detail.startswith(f"{path}: name: ")


def test_a_missing_sites_dir_is_a_failed_config_line(tmp_path: Path) -> None:
    path = tmp_path / "migratio.yml"
    path.write_text(f"name: a\nwork_dir: {tmp_path}\nsites_dir: nowhere\n", encoding="utf-8")
    loaded = config_files.load(path)
    assert [(item.check, item.status) for item in loaded.results] == [("config", Status.FAIL)]
    assert "sites_dir: is not a directory" in loaded.results[0].detail


def test_work_dir_writable_missing_and_read_only(tmp_path: Path) -> None:
    assert work_dir.writable(tmp_path).status is Status.OK
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    missing = work_dir.writable(tmp_path / "a" / "b")
    assert missing.status is Status.OK
    assert "does not exist yet" in missing.detail
    assert not (tmp_path / "a").exists()  # doctor does not create it
    (tmp_path / "file").write_text("")
    assert work_dir.writable(tmp_path / "file").status is Status.FAIL


def test_work_dir_free_space_warns_under_the_threshold(tmp_path: Path) -> None:
    assert work_dir.free_space(tmp_path, 1).status is Status.OK
    low = work_dir.free_space(tmp_path, 1 << 60)
    assert low.status is Status.WARN
    assert "under 1073741824.0 GiB" in low.detail


def test_ledger_missing_current_behind_and_unknown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    missing = ledger.schema(url)
    assert missing.status is Status.WARN
    assert not (tmp_path / "ledger.sqlite").exists()  # never created

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    current = ledger.schema(url)
    assert current.status is Status.OK, current.detail
    assert "(current)" in current.detail

    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    unknown = ledger.schema(url)
    assert unknown.status is Status.FAIL
    assert "f00dfeed, which this migratio does not know" in unknown.detail

    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        connection.execute("DELETE FROM alembic_version")
    behind = ledger.schema(url)
    assert behind.status is Status.WARN
    assert "schema at revision none" in behind.detail


def test_a_ledger_that_cannot_be_read_fails(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database at all" * 100)
    verdict = ledger.schema(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assert verdict.status is Status.FAIL
    assert "cannot read the ledger" in verdict.detail


def _site(tmp_path: Path, name: str, text: str) -> Site:
    path = tmp_path / f"{name}.yml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


def test_a_missing_tool_fails_only_when_a_site_needs_conversions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = _site(tmp_path, "keep", "type: openstack\ncloud: a\n")
    raw = _site(tmp_path, "raw", "type: openstack\ncloud: a\ndisk_format: raw\n")
    aws = _site(tmp_path, "aws", "type: aws\nregion: eu-west-1\n")
    assert [qemu_img.converts_for(site) for site in (keep, raw, aws)] == [False, True, True]
    monkeypatch.setenv("PATH", str(tmp_path))
    assert qemu_img.tool(["qemu-img", "--version"], "qemu-utils", []).status is Status.WARN
    needed = qemu_img.tool(["qemu-img", "--version"], "qemu-utils", ["raw"])
    assert needed.status is Status.FAIL
    assert "needed for raw" in needed.detail


def test_redis_never_shows_its_password(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://user:s3cr3t-pw@127.0.0.1:{port}/0"
    daemon = DaemonConfig(name="a", work_dir=tmp_path, redis_url=url)
    verdict = redis_server.answers(daemon, 2)
    assert verdict.status is Status.FAIL
    assert f"redis://user:***@127.0.0.1:{port}/0" in verdict.detail
    assert "s3cr3t-pw" not in verdict.detail
    off = daemon.model_copy(update={"intake": False, "feedback": False})
    assert redis_server.answers(off, 2).status is Status.OK
