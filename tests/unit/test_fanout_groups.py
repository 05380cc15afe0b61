"""Fan-out groups in the ledger and on the command line: one submit with several
``--to`` makes one migration per destination in one group; Redis jobs for the
same image and source within the coalescing window join one group."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import update

from migratio.cli import main
from migratio.config import load_settings
from migratio.ledger.models import MigrationRow
from migratio.ledger.store import JobOutcome, JobRequest, Ledger, utcnow
from migratio.operations import open_ledger

SITES = ("site-a", "site-b", "site-c", "aws-a")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    sites = tmp_path / "sites"
    sites.mkdir()
    for site in SITES:
        body = "type: aws\nregion: eu-west-1\n" if site == "aws-a" else "type: openstack\n"
        (sites / f"{site}.yml").write_text(body + ("" if site == "aws-a" else f"cloud: {site}\n"))
    path = tmp_path / "migratio.yml"
    values = {"name": "site-a", "work_dir": str(tmp_path / "work"), "sites_dir": str(sites)}
    path.write_text(yaml.safe_dump(values))
    return path


def _cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_one_submit_to_three_sites_makes_a_group_status_and_show_name(config: Path) -> None:
    _cli(config, "db", "upgrade")
    argv = ("submit", "--image", "img-1", "--to", "site-b", "--to", "aws-a", "--to", "site-c")
    submitted = json.loads(_cli(config, *argv, "--json"))
    members = submitted["migrations"]
    assert [m["dest_site"] for m in members] == ["site-b", "aws-a", "site-c"]
    ledger = open_ledger(load_settings(config))
    group = submitted["group"]
    assert {ledger.get(m["id"]).group_id for m in members} == {group}
    assert len({ledger.get(m["id"]).created_at for m in members}) == 1  # one transaction
    _cli(config, "submit", "--image", "img-2", "--to", "site-b")  # alone: no group

    rows = json.loads(_cli(config, "status", "--json"))
    assert sorted((r["image"], r["dest_site"], r["group"]) for r in rows) == [
        ("img-1", "aws-a", group),
        ("img-1", "site-b", group),
        ("img-1", "site-c", group),
        ("img-2", "site-b", None),
    ]
    table = _cli(config, "status")
    assert "GROUP" in table.splitlines()[0] and table.count(group[:8]) == 3

    shown = json.loads(_cli(config, "show", "--json", members[0]["id"]))
    assert shown["group_id"] == group
    assert shown["siblings"] == [
        {"id": m["id"], "dest_site": m["dest_site"], "state": "queued"} for m in members[1:]
    ]
    text = _cli(config, "show", members[1]["id"])
    assert "siblings (same group, same read of the source):" in text
    assert members[0]["id"] in text and members[2]["id"] in text


def _job(n: int, dest: str, image: str = "img", source: str = "site-a") -> JobRequest:
    return JobRequest(f"job-{n}", source, dest, image, "test queue")


def _age(ledger: Ledger, migration_id: str, seconds: float) -> None:
    with ledger.engine.begin() as connection:
        connection.execute(
            update(MigrationRow)
            .where(MigrationRow.id == migration_id)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


def test_jobs_within_the_coalescing_window_join_one_group(ledger: Ledger) -> None:
    first = ledger.accept_jobs([_job(1, "site-b"), _job(2, "site-c")], coalesce_seconds=3)
    later = ledger.accept_jobs([_job(3, "aws-a")], coalesce_seconds=3)
    again = ledger.accept_jobs([_job(4, "site-b")], coalesce_seconds=3)  # same route: joins it
    other = ledger.accept_jobs(
        [_job(5, "site-c", source="site-b"), _job(6, "site-b", image="img-other")],
        coalesce_seconds=3,
    )
    grouped = {ledger.get(r.migration_id).group_id for r in [*first, *later]}
    assert len(grouped) == 1 and None not in grouped
    assert again[0].outcome is JobOutcome.ATTACHED
    assert again[0].migration_id == first[0].migration_id
    assert [ledger.get(r.migration_id).group_id for r in other] == [None, None]


def test_jobs_outside_the_window_or_after_a_lone_read_began_stay_alone(ledger: Ledger) -> None:
    old = ledger.accept_jobs([_job(1, "site-b")], coalesce_seconds=3)[0].migration_id
    _age(ledger, old, 10)
    late = ledger.accept_jobs([_job(2, "site-c")], coalesce_seconds=3)[0].migration_id
    assert ledger.get(old).group_id is None and ledger.get(late).group_id is None
    # Already reading alone (past queued, no group): a newcomer reads on its own.
    with ledger.engine.begin() as connection:
        connection.execute(
            update(MigrationRow).where(MigrationRow.id == late).values(state="exporting")
        )
    newcomer = ledger.accept_jobs([_job(3, "aws-a")], coalesce_seconds=3)[0].migration_id
    assert ledger.get(newcomer).group_id is None
    off = ledger.accept_jobs([_job(4, "site-b"), _job(5, "site-c", image="i2")])
    assert [ledger.get(r.migration_id).group_id for r in off] == [None, None]
