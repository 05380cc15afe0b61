"""Fan-out groups on the command line: one submit with several ``--to`` makes one
migration per destination in one group, which ``status`` and ``show`` name.
(Groups in the ledger, coalescing included: tests/drivers/ledger/test_ledger_groups.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from migratio.cli import main
from migratio.config import load_settings
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
    created = sorted(ledger.get(m["id"]).created_at for m in members)
    assert (created[-1] - created[0]).total_seconds() < 0.001  # at once, in the order given
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
