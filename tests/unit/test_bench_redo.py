"""``bench/all --redo``: a re-run's records replace only its own benchmark's, and
the document says when and on what load that part ran."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

OLD_MACHINE = ["- date: 2026-12-01 04:00 UTC; commit aaaaaaa", "- load average at start: 2.47"]
NEW_MACHINE = ["- date: 2026-12-03 07:00 UTC; commit bbbbbbb", "- load average at start: 0.51"]


def _bench_all() -> ModuleType:
    """bench/all.py, imported by the test that needs it (it brings the test bed's
    library: 0.1 s every worker would otherwise pay at collection)."""
    return importlib.import_module("bench.all")


def _status(seconds: float, script: str = "ledger_cost.py") -> dict[str, Any]:
    return {
        "bench": script.removesuffix(".py"),
        "figure": "status",
        "median": seconds,
        "command": f"python3 bench/{script} --migrations 100000 --rounds 5",
    }


def test_a_redo_replaces_only_its_own_records_and_failures(tmp_path: Path) -> None:
    records = tmp_path / "PERFORMANCE.jsonl"
    header = {
        "bench": "_run",
        "invocation": "bench/all --rounds 3",
        "tiny": False,
        "machine": OLD_MACHINE,
        "failures": ["python3 bench/ledger_cost.py --migrations 1000 --rounds 5"],
    }
    kept = _status(1.0, "intake_rate.py")
    lines = [header, kept, _status(0.419)]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    redo = {"bench": "_run", "invocation": "bench/all --redo ledger_cost.py",
            "machine": NEW_MACHINE, "failures": []}  # fmt: skip

    merged_header, merged = _bench_all()._merged(
        records, redo, [_status(0.286)], {"ledger_cost.py"}
    )

    assert merged == [kept, _status(0.286)]
    assert merged_header["failures"] == []
    assert merged_header["machine"] == OLD_MACHINE
    assert merged_header["redone"] == [redo]


def test_a_second_redo_of_a_benchmark_replaces_the_first_ones_line(tmp_path: Path) -> None:
    records = tmp_path / "PERFORMANCE.jsonl"
    first = {"invocation": "bench/all --redo ledger_cost.py", "machine": OLD_MACHINE}
    other = {"invocation": "bench/all --redo ledger_cost.py --redo fanout.py", "machine": []}
    header = {"bench": "_run", "invocation": "bench/all --rounds 3", "tiny": False,
              "machine": OLD_MACHINE, "failures": [], "redone": [first, other]}  # fmt: skip
    records.write_text(json.dumps(header) + "\n" + json.dumps(_status(0.419)) + "\n")
    again = {"bench": "_run", "invocation": "bench/all --redo ledger_cost.py",
             "machine": NEW_MACHINE, "failures": []}  # fmt: skip

    merged_header, _ = _bench_all()._merged(records, again, [], {"ledger_cost.py"})

    # fanout.py's records of the second line are still shown: that line stays.
    assert merged_header["redone"] == [other, again]


def test_the_document_lists_each_redo_under_the_machine(tmp_path: Path) -> None:
    records, out = tmp_path / "PERFORMANCE.jsonl", tmp_path / "PERFORMANCE.md"
    redo = {"invocation": "bench/all --redo ledger_cost.py", "machine": NEW_MACHINE}
    header = {"bench": "_run", "invocation": "bench/all --rounds 3", "tiny": False,
              "machine": OLD_MACHINE, "failures": [], "redone": [redo]}  # fmt: skip
    records.write_text(json.dumps(header) + "\n" + json.dumps(_status(0.286)) + "\n")

    _bench_all().write_document(records, out)

    document = out.read_text()
    assert "- date: 2026-12-01 04:00 UTC; commit aaaaaaa\n" in document
    assert (
        "- re-run by `bench/all --redo ledger_cost.py`: 2026-12-03 07:00 UTC; commit bbbbbbb; "
        "load average at start: 0.51\n"
    ) in document
