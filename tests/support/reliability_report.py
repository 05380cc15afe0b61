"""Render the figures ``support/chaos`` recorded into docs/RELIABILITY.md.

Usage: ``python3 -m tests.support.reliability_report FIGURES.jsonl docs/RELIABILITY.md``.
The table replaces what stands between the ``figures:begin``/``figures:end`` markers,
so the prose around it stays hand-written.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def rows_of(figures_file: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each table row's cases in the order they were recorded."""
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for line in figures_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            rows[entry["row"]].append((entry["case"], entry["figures"]))
    return rows


def table(rows: dict[str, list[tuple[str, dict[str, Any]]]]) -> str:
    lines = ["| id | case | figures |", "|---|---|---|"]
    for row in sorted(rows, key=lambda name: (len(name), name)):
        for case, figures in rows[row]:
            shown = ", ".join(f"{key} {_shown(value)}" for key, value in figures.items())
            lines.append(f"| {row} | {case} | {shown} |")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def render(figures_file: Path, document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    head, found, rest = text.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{document}: no {BEGIN} … {END} markers")
    body = table(rows_of(figures_file))
    document.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    render(Path(sys.argv[1]), Path(sys.argv[2]))
