"""How a benchmark figure is read from the JSON lines the benchmarks printed
(bench/all) and written in docs/PERFORMANCE.md: the median with the min-max over
the rounds, the records of the largest size a benchmark ran at, a goal's row."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
MIB = 1 << 20


def spread(values: Iterable[float], digits: int = 2) -> str:
    """``median (min-max)``, or the one value."""
    values = list(values)
    if not values:
        return "not measured"
    median = f"{statistics.median(values):.{digits}f}"
    if min(values) == max(values):
        return median
    return f"{median} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def of(records: list[Record], bench: str, **wanted: Any) -> list[Record]:
    return [
        r
        for r in records
        if r.get("bench") == bench and all(r.get(k) == v for k, v in wanted.items())
    ]


def largest(records: list[Record], key: str) -> list[Record]:
    """The records of the largest ``key`` (size_mib, migrations, ...) present."""
    sizes = [r[key] for r in records if r.get(key) is not None]
    if not sizes:
        return []
    return [r for r in records if r.get(key) == max(sizes)]


@dataclass(frozen=True)
class Goal:
    """One line of the goals table: rounds' values, a baseline, a bound."""

    number: str
    what: str
    values: list[float]
    unit: str
    bound: float | None
    baseline: str
    command: str
    digits: int = 2
    missing: str = "not measured"

    def row(self) -> str:
        unit = "" if self.unit == "x" else f" {self.unit}"
        figure = spread(self.values, self.digits) + unit if self.values else self.missing
        goal = "—" if self.bound is None else f"≤ {self.bound:g}{unit}"
        if self.bound is None:
            met = "—"
        elif not self.values:
            met = self.missing
        else:
            met = "met" if statistics.median(self.values) <= self.bound else "**not met**"
        return (
            f"| {self.number} | {self.what} | {figure} | {self.baseline} | {goal} | {met} "
            f"| `{self.command}` |"
        )


def command(records: list[Record]) -> str:
    return records[0]["command"] if records else "—"


def size_label(records: list[Record]) -> str:
    return f"{records[0]['size_mib']} MiB" if records else "—"


def percent(shares: Iterable[float]) -> str:
    """Shares (0-1) as whole percents: median (min-max)."""
    return spread((100 * share for share in shares), 0)


def as_installed(ledger: list[Record]) -> list[Record]:
    """Start-up figures with migratio's bytecode compiled, as ``pip install``
    leaves it: what operators meet (records without ``bytecode`` predate the
    distinction and count as such)."""
    return [r for r in ledger if r.get("bytecode", True)]


def without_bytecode(ledger: list[Record]) -> list[Record]:
    """Start-up figures under PYTHONDONTWRITEBYTECODE=1 (every run compiles again)."""
    return [r for r in ledger if r.get("bytecode") is False]


def summary_values(figures: list[Record]) -> list[float]:
    """A ledger_cost figure's min, median and max (its rounds are not printed one
    by one): spread() of these three shows the figure's own median and range."""
    return [v for f in figures[:1] for v in (f["min"], f["median"], f["max"])]


def summary(figures: list[Record], digits: int) -> str:
    return spread(summary_values(figures), digits)
