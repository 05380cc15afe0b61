"""CI runs every benchmark once, at its tiny size, through ``bench/all``: a bench
that breaks (a renamed function, a changed CLI, a JSON key the document reads)
fails here, not on the day someone wants figures. A tiny run's figures mean
nothing on a shared machine; the document's shape and a figure in every row do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testbed_lib

pytestmark = [pytest.mark.testbed, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BENCHES = {
    "transfer_vs_curl",
    "aws_vs_legacy",
    "ssh_vs_scp",
    "aws_scaling",
    "concurrency",
    "intake_rate",
    "ledger_cost",
    "fanout",
}
SECTIONS = (
    "## Goals",
    "## How cost grows",
    "### O→O against",
    "### AWS: ebs-direct against the legacy path",
    "### Intake rate and `migratio status` against ledger size",
    "## Machine and command",
)
NUMBER = re.compile(r"\d+(\.\d+)?")


def tables(document: str) -> dict[str, list[list[str]]]:
    """The body rows of each markdown table, by the heading above it."""
    found: dict[str, list[list[str]]] = {}
    heading = ""
    for line in document.splitlines():
        if line.startswith("#"):
            heading = line
        elif line.startswith("|") and not line.startswith("|---"):
            found.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    # Drop each table's header row.
    return {name: rows[1:] for name, rows in found.items()}


def test_bench_all_tiny_renders_every_section_with_a_figure_in_each_row(
    testbed: testbed_lib.Bed, postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "PERFORMANCE.md"
    committed = (ROOT / "docs" / "PERFORMANCE.md").read_bytes()
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "bench" / "all"), "--tiny", "--out", str(out)],
        env={
            **os.environ,
            "MIGRATIO_TESTBED_DIR": str(testbed.dir),
            "MIGRATIO_TEST_POSTGRES_URL": postgres_url,
        },
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"bench/all --tiny: {elapsed:.1f} s")

    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    header = lines[0]
    assert header["bench"] == "_run" and header["tiny"] and header["failures"] == []
    assert {record["bench"] for record in lines[1:]} == BENCHES

    document = out.read_text()
    assert "Tiny smoke run" in document
    for section in SECTIONS:
        assert section in document, section
    found = tables(document)
    goals = found["## Goals"]
    assert {row[0] for row in goals} >= {"1", "2", "3", "4", "5"}
    assert any("capped at" in row[1] for row in goals), "no fan-out row with capped links"
    for row in goals:
        what, figure, met, command = row[1], row[2], row[-2], row[-1]
        if what.endswith("running, SSH site"):
            # --tiny leaves the SSH site out of bench/concurrency.py (see its --tiny).
            assert figure == met == "not run by this command", row
            continue
        assert NUMBER.match(figure), f"no figure for {what}: {row}"
        assert met in {"met", "**not met**", "—"}, row
        assert command.startswith("`python3 bench/"), row
    growth = [name for name in found if name.startswith("### ")]
    assert len(growth) == 3, growth
    for name in growth:
        assert found[name], f"{name}: no rows"
        for row in found[name]:
            assert all(NUMBER.search(cell) for cell in row), f"{name}: {row}"
    assert "- command: `bench/all --tiny --out" in document
    # A tiny run never touches the committed document.
    assert (ROOT / "docs" / "PERFORMANCE.md").read_bytes() == committed
