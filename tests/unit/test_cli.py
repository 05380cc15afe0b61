"""The ``migratio`` command as operators meet it: bad input gets one line and the
right exit code, read-only commands change nothing, remote data cannot drive the
terminal. No cloud is needed: the sites are configured but never contacted.

The command runs in-process (click's runner) for speed; the end-to-end tests run
it as operators do, as a separate process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from migratio.cli import main
from migratio.config import load_settings
from migratio.drivers.registry import open_source
from migratio.errors import ConfigError
from migratio.ledger.store import Ledger
from migratio.machine import Trigger
from migratio.operations import open_ledger
from tests.support.ledgers import fresh_sqlite_ledger

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
def ledger(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    """The config's ledger at the newest schema: a copy of the session's upgraded
    template (``db upgrade`` on no ledger is tested on its own below)."""
    work = config.parent / "work"
    work.mkdir()
    fresh_sqlite_ledger(work, tmp_path_factory.getbasetemp())
    return open_ledger(load_settings(config))


def test_status_of_an_unknown_state_is_a_usage_error(ledger: Ledger, config: Path) -> None:
    result = _cli(config, "status", "--state", "bogus", check=False)
    assert result.returncode == 2
    assert "Invalid value for '--state': 'bogus' is not one of" in result.stderr
    assert _cli(config, "status", "--state", "queued").returncode == 0


def test_status_without_a_ledger_creates_nothing(config: Path, tmp_path: Path) -> None:
    for command in (["status"], ["show", "0123abcd"]):
        line = _one_line(_cli(config, *command, check=False), 3)
        assert line == (
            f"migratio: no ledger at {tmp_path / 'work' / 'ledger.sqlite'}: start the daemon "
            "(migratio run) or run 'migratio db upgrade' first"
        )
    assert not (tmp_path / "work").exists()
    assert _cli(config, "db", "upgrade").stdout == "ledger schema is up to date\n"
    assert _cli(config, "status", "--json").stdout.strip() == "[]"


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


def test_status_checks_only_what_locates_the_ledger(tmp_path: Path) -> None:
    """``status`` answers at once (issue 12): it reads where the ledger is, not
    every setting; the commands that use the others refuse them."""
    config = _config(tmp_path, concurrency=0)
    Ledger.open(f"sqlite:///{tmp_path / 'work' / 'ledger.sqlite'}").close()
    assert _cli(config, "status", "--json").stdout.strip() == "[]"
    line = _one_line(_cli(config, "run", "--until-idle", check=False), 2)
    assert line.startswith(f"migratio: config error: {config}: concurrency: ")
    (tmp_path / "sites" / "site-b.yml").write_text("type: [unclosed\n")
    line = _one_line(_cli(config, "status", check=False), 2)
    site_b = tmp_path / "sites" / "site-b.yml"
    assert line == f"migratio: config error: {site_b}: line 2: is not valid YAML"


def test_an_unreachable_postgresql_ledger_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://migratio:secret@127.0.0.1:{port}/ledger"
    config = _config(tmp_path, database_url=url)
    for command in (["status"], ["db", "upgrade"], ["run", "--until-idle"]):
        line = _one_line(_cli(config, *command, check=False), 3)
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
    for pattern in (prefix + "_", prefix[:3] + "%", "ABCDEF12", "\\", ""):
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


def test_config_after_the_command_and_json_everywhere(ledger: Ledger, config: Path) -> None:
    submitted = json.loads(
        CliRunner()
        .invoke(
            main,
            ["submit", "--image", "img-7", "--to", "site-b", "--json", "--config", str(config)],
        )
        .stdout
    )
    assert submitted["state"] == "queued" and ledger.get(submitted["id"]).image_id == "img-7"
    cancelled = json.loads(_cli(config, "cancel", submitted["id"], "--json").stdout)
    assert cancelled == {"id": submitted["id"], "state": "cancelled", "held_by": None}
    retried = json.loads(_cli(config, "retry", submitted["id"][:8], "--json").stdout)
    assert retried == {"id": submitted["id"], "state": "queued"}
    assert json.loads(_cli(config, "db", "upgrade", "--json").stdout) == {"schema": "up to date"}


def test_submit_names_the_previous_version_with_base(ledger: Ledger, config: Path) -> None:
    submitted = json.loads(
        _cli(config, "submit", "--image", "v2", "--to", "site-b", "--base", "v1", "--json").stdout
    )
    migration = ledger.get(submitted["id"])
    assert (migration.image_id, migration.base_image_id) == ("v2", "v1")
    assert ledger.history(migration.id)[0].message.endswith("; base version v1")
    result = _cli(config, "submit", "--image", "v2", "--to", "site-b", "--base", " ", check=False)
    assert _one_line(result, 2) == "migratio: usage error: --base must not be empty"


def test_a_repeated_destination_is_refused_not_dropped(ledger: Ledger, config: Path) -> None:
    argv = ("submit", "--image", "i", "--to", "site-b", "--to", "site-b", "--to", "site-b")
    result = _cli(config, *argv, check=False)
    assert _one_line(result, 2) == "migratio: usage error: --to: 'site-b' given more than once"
    # One bad destination refuses the whole submit: nothing is half queued.
    result = _cli(config, "submit", "--image", "i", "--to", "site-b", "--to", "site-a", check=False)
    assert _one_line(result, 2) == "migratio: usage error: source and destination are the same site"
    assert ledger.migrations() == []


def test_status_filters_limits_and_says_what_it_left_out(ledger: Ledger, config: Path) -> None:
    for n in range(5):
        ledger.create("site-a", "site-b", f"img-{n}", job_id=f"job-{n}")
    ledger.create("site-b", "site-a", "img-back")
    table = _cli(config, "status", "--limit", "2").stdout
    assert "showing the newest 2 of 6; --limit N or --all for more" in table
    assert len(json.loads(_cli(config, "status", "--all", "--json").stdout)) == 6
    assert [
        row["image"]
        for row in json.loads(_cli(config, "status", "--json", "--image", "img-3").stdout)
    ] == ["img-3"]
    assert [
        row["image"]
        for row in json.loads(_cli(config, "status", "--json", "--job", "job-1").stdout)
    ] == ["img-1"]
    by_site = json.loads(_cli(config, "status", "--json", "--site", "site-b", "--all").stdout)
    assert len(by_site) == 6
    assert [
        r["image"]
        for r in json.loads(_cli(config, "status", "--json", "--state", "exporting").stdout)
    ] == []


def test_status_tells_waiting_paused_and_running_apart(ledger: Ledger, config: Path) -> None:
    waiting = ledger.create("site-a", "site-b", "img-wait")
    paused = ledger.create("site-a", "site-b", "img-paused")
    running = ledger.create("site-a", "site-b", "img-run")
    for_space = ledger.create("site-a", "site-b", "img-space")
    for migration in (waiting, paused, running, for_space):
        assert ledger.acquire(migration.id, "test-daemon", 60)
        ledger.transition(migration.id, "test-daemon", Trigger.START, "test")
    ledger.schedule_retry(waiting.id, "test-daemon", 1, 300, "site down")
    ledger.release(paused.id, "test-daemon")
    # Waiting for work-dir space, looked at again twice: one note, no attempt spent.
    for free in (10, 20, 30):
        if free > 10:
            assert ledger.acquire(for_space.id, "test-daemon", 60)
        noted = ledger.wait(for_space.id, "test-daemon", 300, f"waiting for space: {free} free")
        assert noted is (free == 10)
    space = ledger.get(for_space.id)
    assert (space.attempt, space.lease_owner, space.last_error) == (0, None, None)
    notes = [t.message for t in ledger.history(for_space.id) if t.from_state == t.to_state]
    assert notes == ["waiting for space: 10 free"]
    rows = {row["image"]: row for row in json.loads(_cli(config, "status", "--json").stdout)}
    assert rows["img-wait"]["activity"] == "waiting to retry"
    assert 200 < rows["img-wait"]["retry_in_seconds"] <= 300
    assert rows["img-paused"]["activity"] == "paused"
    assert rows["img-space"]["activity"] == "waiting"
    assert (rows["img-run"]["activity"], rows["img-run"]["held_by"]) == ("running", "test-daemon")
    table = _cli(config, "status").stdout
    assert "exporting (retry in" in table and "exporting (paused)" in table
    assert "exporting (waiting)" in table
    assert "site down" in table


def test_show_prints_json_values_and_the_time_in_each_state(ledger: Ledger, config: Path) -> None:
    migration = ledger.create("site-a", "site-b", "img-show")
    ledger.transition(migration.id, None, Trigger.START, "test")
    shown = _cli(config, "show", migration.id).stdout
    assert "None" not in shown and "False" not in shown
    assert "cancel_requested  false" in shown and "dest_image_id     null" in shown
    assert "time in each state:" in shown and "  queued" in shown and "  exporting" in shown
    durations = _show(config, migration.id)["durations"]
    assert set(durations) == {"queued", "exporting"} and all(v >= 0 for v in durations.values())


def test_an_unreachable_redis_is_exit_3_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tmp_path, redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    args = ["submit", "--via-redis", "--image", "i", "--to", "site-b"]
    line = _one_line(_cli(config, *args, check=False), 3)
    assert line.startswith("migratio: cannot push to redis at redis://") and "hunter2" not in line
    debugged = CliRunner().invoke(main, ["--debug", "--config", str(config), *args])
    assert debugged.exit_code != 0 and debugged.exc_info is not None
    assert debugged.exc_info[0].__name__ == "RedisUnavailable"


def test_the_live_view_shows_a_bar_the_speed_and_the_time_left() -> None:
    from rich.console import Console

    from migratio.cli.inspect import status_table

    row = {
        "id": "0123abcd-0000",
        "image": "img",
        "name": "template",
        "source_site": "site-a",
        "dest_site": "site-b",
        "state": "uploading",
        "activity": "running",
        "retry_in_seconds": None,
        "progress": 0.25,
        "bytes_done": 256 * 1024 * 1024,
        "bytes_total": 1024 * 1024 * 1024,
        "age_seconds": 12,
        "error": None,
    }
    console = Console(record=True, width=140)
    console.print(status_table([row], {"0123abcd-0000": 128 * 1024 * 1024}))
    screen = console.export_text()
    assert "template (img)" in screen and "128 MiB/s" in screen and "6s" in screen
    assert "━" in screen  # the progress bar


def test_every_command_takes_json_and_config_after_it() -> None:
    import click

    def leaves(group: click.Group, path: str = "") -> list[tuple[str, click.Command]]:
        found: list[tuple[str, click.Command]] = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += leaves(command, f"{path}{name} ")
            else:
                found.append((f"{path}{name}", command))
        return found

    for name, command in leaves(main):
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--json", "--config"} <= options, name


# What an operator's read-only command must not load: cloud SDKs, Redis, the engine,
# and what start-up cannot afford (issue 12): SQLAlchemy and Alembic (status reads
# through the database's own driver), pydantic (it reads only where the ledger is),
# the state machine's library.
HEAVY_FOR_A_READ = (
    "boto3",
    "botocore",
    "openstack",
    "paramiko",
    "redis",
    "migratio.supervisor",
    "sqlalchemy",
    "alembic",
    "pydantic",
    "transitions",
)


@pytest.mark.parametrize("command", [["--help"], ["status"]])
def test_read_only_commands_load_no_cloud_sdk_redis_or_engine(
    ledger: Ledger, config: Path, command: list[str]
) -> None:
    """Start-up time is import time (issue "Performance": --help and status)."""
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "migratio", "--config", str(config), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    loaded = {line.split("|")[-1].strip() for line in ran.stderr.splitlines() if "|" in line}
    assert "migratio.cli" in loaded  # the import log was read
    assert sorted(loaded & set(HEAVY_FOR_A_READ)) == []


def test_db_prune_archives_then_deletes_what_ended_long_ago(
    ledger: Ledger, config: Path, tmp_path: Path
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from migratio.ledger.models import MIGRATIONS
    from migratio.ledger.store import utcnow

    old, recent = (ledger.create("site-a", "site-b", image) for image in ("img-1", "img-2"))
    for migration in (old, recent):
        assert ledger.acquire(migration.id, "d1", 30)
        ledger.transition(migration.id, "d1", Trigger.FAIL, "boom")
    with ledger.engine.begin() as connection:
        ended = utcnow() - timedelta(days=40)
        connection.execute(
            update(MIGRATIONS).where(MIGRATIONS.c.id == old.id).values(finished_at=ended)
        )
    archive = tmp_path / "pruned.jsonl"

    dry = json.loads(
        _cli(config, "db", "prune", "--older-than", "30", "--dry-run", "--json").stdout
    )
    assert (dry["migrations"], dry["dry_run"]) == (1, True)
    shown = _show(config, old.id)
    ran = _cli(config, "db", "prune", "--older-than", "30", "--archive", str(archive))
    assert ran.stdout.startswith("pruned 1 migrations ended before "), ran.stdout
    assert f"archived to {archive}" in ran.stdout
    assert [json.loads(line) for line in archive.read_text().splitlines()] == [shown]
    assert [m.id for m in ledger.migrations()] == [recent.id]
    refused = _cli(config, "db", "prune", "--older-than", "0", check=False)
    assert refused.returncode == 2 and "--older-than" in refused.stderr


def test_db_prune_refuses_an_archive_it_cannot_write_before_deleting(
    ledger: Ledger, config: Path, tmp_path: Path
) -> None:
    failed = ledger.create("site-a", "site-b", "img-1")
    assert ledger.acquire(failed.id, "d1", 30)
    ledger.transition(failed.id, "d1", Trigger.FAIL, "boom")
    with ledger.engine.begin() as connection:
        connection.execute(text("UPDATE migrations SET finished_at = '2000-01-01 00:00:00'"))
    nowhere = tmp_path / "missing" / "pruned.jsonl"
    ran = _cli(config, "db", "prune", "--older-than", "30", "--archive", str(nowhere), check=False)
    assert _one_line(ran, 2) == (
        f"migratio: usage error: cannot write the archive {nowhere}: No such file or directory"
    )
    assert ledger.get(failed.id).state == "failed"
