"""The ``migratio`` command as operators meet it: bad input gets one line and the
right exit code, read-only commands change nothing, remote data cannot drive the
terminal. No cloud is needed: the sites are configured but never contacted.

The command runs in-process (click's runner) for speed; the end-to-end tests run
it as operators do, as a separate process.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from migratio.cli import main
from migratio.config import load_settings
from migratio.drivers.registry import open_source
from migratio.errors import ConfigError
from migratio.ledger.store import Ledger
from migratio.machine import Trigger
from migratio.operations import open_ledger

EVIL_IMAGE = "evil\x1b[31mRED\u202e\nforged line\x07"


def _config(directory: Path, **settings: object) -> Path:
    sites = directory / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    for site in ("site-a", "site-b"):
        (sites / f"{site}.yml").write_text(f"type: openstack\ncloud: {site}\n")
    values: dict[str, object] = {
        "name": "site-a",
        "work_dir": str(directory / "work"),
        "sites_dir": str(sites),
        **settings,
    }
    path = directory / "migratio.yml"
    path.write_text(yaml.safe_dump(values))
    return path


@dataclass(frozen=True)
class _Ran:
    returncode: int
    stdout: str
    stderr: str


def _cli(config: Path, *args: str, check: bool = True) -> _Ran:
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    ran = _Ran(result.exit_code, result.stdout, result.stderr)
    if check and ran.returncode != 0:
        raise AssertionError(f"migratio {' '.join(args)} exited {ran.returncode}: {ran.stderr}")
    return ran


def _show(config: Path, migration_id: str) -> dict[str, Any]:
    return dict(json.loads(_cli(config, "show", "--json", migration_id).stdout))


def _one_line(result: _Ran, code: int) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1, result.stderr
    return str(lines[0])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return _config(tmp_path)


@pytest.fixture
def ledger(config: Path) -> Ledger:
    _cli(config, "db", "upgrade")
    return open_ledger(load_settings(config))


def test_status_of_an_unknown_state_is_a_usage_error(ledger: Ledger, config: Path) -> None:
    result = _cli(config, "status", "--state", "bogus", check=False)
    assert result.returncode == 2
    assert "Invalid value for '--state': 'bogus' is not one of" in result.stderr
    assert _cli(config, "status", "--state", "queued").returncode == 0


def test_status_without_a_ledger_creates_nothing(config: Path, tmp_path: Path) -> None:
    for command in (["status"], ["show", "0123abcd"]):
        line = _one_line(_cli(config, *command, check=False), 1)
        assert line == (
            f"migratio: no ledger at {tmp_path / 'work' / 'ledger.sqlite'}: start the daemon "
            "(migratio run) or run 'migratio db upgrade' first"
        )
    assert not (tmp_path / "work").exists()


def test_a_config_or_site_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_bytes(config.read_bytes() + b"# caf\xe9\n")
    line = _one_line(_cli(config, "status", check=False), 2)
    assert line.startswith(f"migratio: config error: {config}: is not UTF-8 text (byte 0xe9")

    config = _config(tmp_path / "other")
    site = tmp_path / "other" / "sites" / "site-b.yml"
    site.write_bytes(b"type: openstack\ncloud: \xff\n")
    line = _one_line(_cli(config, "status", check=False), 2)
    assert line.startswith(f"migratio: config error: {site}: is not UTF-8 text (byte 0xff")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"database_url": "notadb://x"}, "database_url: Value error, database 'notadb' is not"),
        ({"database_url": "nonsense"}, "database_url: Value error, is not a database URL"),
        ({"work_dir": "/etc/passwd"}, "work_dir: /etc/passwd is not a directory"),
    ],
)
def test_a_ledger_the_config_cannot_name_is_a_config_error(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    config = _config(tmp_path, **settings)
    for command in (["status"], ["run", "--until-idle"]):
        line = _one_line(_cli(config, *command, check=False), 2)
        assert line.startswith(f"migratio: config error: {config}: {expected}"), line


def test_an_unreachable_postgresql_ledger_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://migratio:secret@127.0.0.1:{port}/ledger"
    config = _config(tmp_path, database_url=url)
    for command in (["status"], ["db", "upgrade"], ["run", "--until-idle"]):
        line = _one_line(_cli(config, *command, check=False), 1)
        where = f"postgresql+psycopg://migratio:***@127.0.0.1:{port}/ledger"
        assert line.startswith(f"migratio: cannot open the ledger at {where}: "), line
        assert "secret" not in line


def test_submit_to_an_unknown_site_is_a_usage_error(config: Path, tmp_path: Path) -> None:
    for flags in (["--to", "nowhere"], ["--from", "elsewhere", "--to", "site-b"]):
        result = _cli(config, "submit", "--image", "i", *flags, check=False)
        line = _one_line(result, 2)
        unknown = flags[1]
        option = flags[0]
        assert line == (
            f"migratio: usage error: {option}: unknown site {unknown!r} (known: site-a, site-b)"
        )
    assert not (tmp_path / "work").exists()


def test_id_prefixes_match_literally(ledger: Ledger, config: Path) -> None:
    failed = ledger.create("site-a", "site-b", "img-1")
    ledger.transition(failed.id, None, Trigger.START, "test")
    ledger.transition(failed.id, None, Trigger.FAIL, "test", last_error="x")
    prefix = failed.id[:7]
    for pattern in (prefix + "_", prefix[:3] + "%", failed.id[:8].upper(), "\\", ""):
        result = _cli(config, "show", pattern, check=False)
        line = _one_line(result, 2)
        assert line.startswith("migratio: usage error: ") and "not a migration id" in line
    line = _one_line(_cli(config, "retry", prefix + "_", check=False), 2)
    assert ledger.get(failed.id).state == "failed"
    assert _show(config, failed.id[:8])["id"] == failed.id


def test_remote_text_cannot_drive_the_terminal(ledger: Ledger, config: Path) -> None:
    migration = ledger.create("site-a", "site-b", EVIL_IMAGE, message=f"job for {EVIL_IMAGE}")

    table = _cli(config, "status").stdout
    shown = _cli(config, "show", migration.id).stdout
    for output in (table, shown):
        assert not any(char in output for char in "\x1b\u202e\x07")
        assert "evil\\x1b[31mRED\\u202e\\nforged line\\x07" in output
    assert not any(line.startswith("forged line") for line in shown.splitlines())
    # Machine-readable output stays exact.
    assert _show(config, migration.id)["image_id"] == EVIL_IMAGE
    rows = json.loads(_cli(config, "status", "--json").stdout)
    assert rows[0]["image"] == EVIL_IMAGE


def test_a_destination_only_site_cannot_be_a_source(config: Path, tmp_path: Path) -> None:
    (tmp_path / "sites" / "aws-a.yml").write_text("type: aws\nregion: eu-west-1\n")
    result = _cli(
        config, "submit", "--image", "i", "--from", "aws-a", "--to", "site-b", check=False
    )
    assert _one_line(result, 2) == (
        "migratio: usage error: --from: 'aws-a' is an aws site: images migrate to it, not from it"
    )
    settings = load_settings(config)
    assert settings.source_sites == {"site-a", "site-b"}
    with pytest.raises(ConfigError, match="aws sites are destinations only"):
        open_source(settings.site("aws-a"))
