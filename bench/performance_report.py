"""docs/PERFORMANCE.md from the JSON lines the benchmarks printed (bench/all).

Rendering only: which record answers which goal, and how a figure is written
(median, min-max over the rounds, the same run's baseline beside it). Each goal
reads the largest size its benchmark ran at, so a ``--tiny`` run renders the same
document from the smallest sizes.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
MIB = 1 << 20
OVERLAP_GOAL_MIB = 1024  # goal 3 is set for an image of 1 GiB of data


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


def goals(records: list[Record]) -> list[Goal]:
    found: list[Goal] = []
    ssh = largest(of(records, "ssh_vs_scp"), "size_mib")
    found.append(
        Goal(
            "1",
            f"SSH site: receive / scp, {_size(ssh)}",
            [r["ratio"] for r in ssh],
            "x",
            1.10,
            f"scp {spread(r['scp_seconds'] for r in ssh)} s",
            command(ssh),
            3,
        )
    )
    found.extend(_scaling_goals(of(records, "aws_scaling")))
    found.extend(_overlap_goals(of(records, "aws_vs_legacy", image="random")))
    found.extend(_concurrency_goals(largest(of(records, "concurrency"), "size_mib")))
    found.extend(_cli_goals(of(records, "ledger_cost")))
    found.extend(_holding(records))
    found.extend(_fanout_goals(records))
    return found


def _fanout_goals(records: list[Record]) -> list[Goal]:
    """Issue 13's fan-out: one read of the source, and no slower than the slowest
    destination alone (measured in the same run); also with every destination's
    link capped, where the machine's CPU no longer bounds the wall."""
    runs = largest(of(records, "fanout", link_mib_s=None), "size_mib")
    found = [
        Goal(
            "F",
            f"fan-out: bytes read from site-a / image size, {_where(runs)}",
            [r["read_ratio"] for r in runs],
            "x",
            1.01,
            f"image {spread((r['image_bytes'] / MIB for r in runs), 0)} MiB; "
            f"verified {spread((r['verified'] for r in runs), 0)}",
            command(runs),
            4,
        ),
        _fanout_wall("fan-out: wall / slowest single-destination migration", runs),
    ]
    linked = [r for r in of(records, "fanout") if r.get("link_mib_s")]
    for link in sorted({r["link_mib_s"] for r in linked}):
        capped = largest([r for r in linked if r["link_mib_s"] == link], "size_mib")
        found.append(
            _fanout_wall(
                f"fan-out, each destination site capped at {link} MiB/s (`max_mib_per_s`, "
                "as a link between sites bounds it): wall / slowest single",
                capped,
            )
        )
    down = largest(of(records, "fanout_outage"), "size_mib")
    if down:
        found.append(
            Goal(
                "F",
                f"fan-out, site-b's Glance stopped mid-upload: site-b done, s after it "
                f"is back (aws-a done while it was down: "
                f"{all(r['aws_done_while_down'] for r in down)}), {_size(down)}",
                [r["site_b_done_after_back_s"] for r in down],
                "s",
                None,
                f"down {spread(r['down_seconds'] for r in down)} s, "
                f"{spread((r['site_b_retries'] for r in down), 0)} retries",
                command(down),
            )
        )
    return found


def _where(runs: list[Record]) -> str:
    return f"{_size(runs)} to {', '.join(runs[0]['destinations'])}" if runs else "—"


def _fanout_wall(what: str, runs: list[Record]) -> Goal:
    busy = _percent(r["machine_cpu_seconds"] / (r["cores"] * r["seconds"]) for r in runs)
    # The peers share this machine's cores: their CPU alone, spread over every
    # core, is a wall no daemon could beat here.
    floors = [
        r["peers_cpu_seconds"] / r["cores"] / r["slowest_single_seconds"]
        for r in runs
        if "peers_cpu_seconds" in r
    ]
    floor = (
        f"; the peers' CPU alone, over all {runs[0]['cores']} cores: {spread(floors, 2)}x "
        "the slowest single"
        if floors
        else ""
    )
    return Goal(
        "F",
        f"{what}, {_where(runs)}",
        [r["wall_ratio"] for r in runs],
        "x",
        1.25,
        f"slowest single ({runs[0]['slowest_single'] if runs else '—'}) "
        f"{spread(r['slowest_single_seconds'] for r in runs)} s; verified "
        f"{spread((r['verified'] for r in runs), 0)}; all cores busy {busy}% "
        f"in the fan-out{floor}",
        command(runs),
        3,
    )


def _size(records: list[Record]) -> str:
    return f"{records[0]['size_mib']} MiB" if records else "—"


def _overlap_goals(random: list[Record]) -> list[Goal]:
    """Goal 3 at the size the issue names (1 GiB of data) and at the largest run."""
    sizes = {r["size_mib"] for r in random if r["size_mib"] == OVERLAP_GOAL_MIB}
    sizes |= {r["size_mib"] for r in largest(random, "size_mib")}
    found = []
    for size in sorted(sizes):
        runs = of(random, "aws_vs_legacy", size_mib=size)
        found.append(
            Goal(
                "3",
                f"AWS overlap: ebs-direct wall / max(download, upload), {_size(runs)} of data",
                [
                    r["ebs_seconds"] / max(r["legacy_download_seconds"], r["upload_alone_seconds"])
                    for r in runs
                ],
                "x",
                1.2,
                f"download {spread(r['legacy_download_seconds'] for r in runs)} s, "
                f"upload {spread(r['upload_alone_seconds'] for r in runs)} s alone"
                + _busy(runs, "ebs_machine_busy", "upload_alone_machine_busy"),
                command(runs),
            )
        )
    return found or [Goal("3", "AWS overlap", [], "x", 1.2, "—", "—")]


def _busy(records: list[Record], overlapped: str, alone: str) -> str:
    """How busy the machine's cores were in each (records that say so)."""
    if not records or overlapped not in records[0] or alone not in records[0]:
        return ""
    return (
        f"; all cores busy {_percent(r[overlapped] for r in records)}% "
        f"overlapped, {_percent(r[alone] for r in records)}% upload alone"
    )


def _percent(shares: Iterable[float]) -> str:
    """Shares (0-1) as whole percents: median (min-max)."""
    return spread((100 * share for share in shares), 0)


def _scaling_goals(scaling: list[Record]) -> list[Goal]:
    rounds: dict[int, list[Record]] = {}
    for r in scaling:
        rounds.setdefault(r["round"], []).append(r)
    ratios, disks, smallest = [], [], []
    for runs in rounds.values():
        runs.sort(key=lambda r: r["virtual_mib"])
        ratios.append(runs[-1]["wall"] / runs[0]["wall"])
        smallest.append(runs[0]["wall"])
        disks.append(max(r["peak_disk"] for r in runs) / (runs[0]["data_mib"] * MIB))
    virtual = sorted({r["virtual_mib"] for r in scaling})
    data = scaling[0]["data_mib"] if scaling else 0
    span = f"{virtual[-1]} : {virtual[0]} MiB virtual" if virtual else "—"
    return [
        Goal(
            "2",
            f"AWS scales with data: wall {span}, {data} MiB of data",
            ratios,
            "x",
            1.3,
            f"{virtual[0] if virtual else '—'} MiB virtual: {spread(smallest)} s",
            command(scaling),
        ),
        Goal(
            "2",
            "AWS work-dir peak disk / data",
            disks,
            "x",
            2.0,
            f"data {data} MiB",
            command(scaling),
        ),
    ]


def _concurrency_goals(runs: list[Record]) -> list[Goal]:
    label = f"{runs[0]['migrations']} x {runs[0]['size_mib']} MiB" if runs else "—"
    running = f"{runs[0]['migrations']} running" if runs else "—"
    found = [
        Goal(
            "4",
            f"Concurrency: O→O aggregate wall / concurrent curl, {label}",
            [r["ratio"] for r in runs],
            "x",
            1.10,
            f"curl {spread(r['curl_seconds'] for r in runs)} s",
            command(runs),
        )
    ]
    for path, name in (("oo", "O→O"), ("aws", "AWS ebs-direct"), ("ssh", "SSH site")):
        skipped = runs and all(path in r.get("skipped_paths", []) for r in runs)
        found.append(
            Goal(
                "4",
                f"Daemon peak RSS, {running}, {name}",
                [r[f"{path}_peak_rss_mib"] for r in runs if f"{path}_peak_rss_mib" in r],
                "MiB",
                150,
                _wall(runs, path),
                command(runs),
                0,
                "not run by this command" if skipped else "not measured",
            )
        )
    return found


def _wall(runs: list[Record], path: str) -> str:
    walls = [r[f"{path}_seconds"] for r in runs if f"{path}_seconds" in r]
    return f"wall {spread(walls)} s" if walls else "—"


def _cli_goals(ledger: list[Record]) -> list[Goal]:
    compiled, uncompiled = _as_installed(ledger), _without_bytecode(ledger)
    start = of(compiled, "ledger_cost", figure="python_start")[-1:]
    baseline = f"python3 -c pass {_figure(start, 3)} s"
    found = []

    def but(figures: list[Record]) -> str:
        """The same figure without bytecode, where the run measured it."""
        return f"; no bytecode: {_figure(figures, 3)} s" if figures else ""

    helps = of(compiled, "ledger_cost", figure="help")[-1:]
    slow_helps = of(uncompiled, "ledger_cost", figure="help")[-1:]
    found.append(
        Goal(
            "5",
            "`migratio --help`",
            _values(helps),
            "s",
            0.25,
            baseline + but(slow_helps),
            command(helps),
            3,
        )
    )
    for name, bound in (("sqlite", 0.30), ("postgresql", 0.40)):
        status = largest(of(compiled, "ledger_cost", figure="status", ledger=name), "migrations")
        label = f"{status[0]['migrations']:,}" if status else "—"
        slow = [
            r
            for r in of(uncompiled, "ledger_cost", figure="status", ledger=name)
            if status and r["migrations"] == status[0]["migrations"]
        ]
        found.append(
            Goal(
                "5",
                f"`migratio status`, {label} migrations, {name}",
                _values(status),
                "s",
                bound,
                baseline + but(slow),
                command(status),
                3,
            )
        )
    for name, bound in (("sqlite", 10.0), ("postgresql", 15.0)):
        cost = of(ledger, "ledger_cost", figure="transition", ledger=name)[-1:]
        found.append(
            Goal(
                "5",
                f"One transition + audit + outbox row, {name}",
                _values(cost),
                "ms",
                bound,
                "—",
                command(cost),
                2,
            )
        )
    return found


def _as_installed(ledger: list[Record]) -> list[Record]:
    """Start-up figures with migratio's bytecode compiled, as ``pip install``
    leaves it: what operators meet (records without ``bytecode`` predate the
    distinction and count as such)."""
    return [r for r in ledger if r.get("bytecode", True)]


def _without_bytecode(ledger: list[Record]) -> list[Record]:
    """Start-up figures under PYTHONDONTWRITEBYTECODE=1 (every run compiles again)."""
    return [r for r in ledger if r.get("bytecode") is False]


def _values(figures: list[Record]) -> list[float]:
    """A ledger_cost figure's min, median and max (its rounds are not printed one
    by one): spread() of these three shows the figure's own median and range."""
    return [v for f in figures[:1] for v in (f["min"], f["median"], f["max"])]


def _figure(figures: list[Record], digits: int) -> str:
    return spread(_values(figures), digits)


def _holding(records: list[Record]) -> list[Goal]:
    """The paths the issue found at their limit: they must stay there."""
    oo = largest(of(records, "transfer_vs_curl"), "size_mib")
    scattered = of(records, "aws_vs_legacy", image="scattered-1GiB-virtual") or largest(
        of(records, "aws_vs_legacy"), "size_mib"
    )
    image = "1 GiB virtual, scattered data" if scattered and not scattered[0]["size_mib"] else ""
    image = image or _size(scattered)
    return [
        Goal(
            "—",
            f"(holding) O→O stream / curl GET piped into curl PUT, {_size(oo)}",
            [r["ratio"] for r in oo],
            "x",
            None,
            f"curl {spread(r['curl_seconds'] for r in oo)} s",
            command(oo),
            3,
        ),
        Goal(
            "—",
            f"(holding) ebs-direct bytes / non-zero blocks, {image}",
            [r["bytes_vs_nonzero"] for r in scattered],
            "x",
            1.05,
            f"legacy sends {spread((r['legacy_bytes_sent'] / MIB for r in scattered), 0)} MiB",
            command(scattered),
            3,
        ),
        Goal(
            "—",
            f"(holding) ebs-direct / legacy wall time, {image}",
            [r["time_ratio"] for r in scattered],
            "x",
            0.5,
            f"legacy {spread(r['legacy_seconds'] for r in scattered)} s",
            command(scattered),
            3,
        ),
    ]


def growth_images(records: list[Record]) -> list[str]:
    lines = [
        "### O→O against `curl GET | curl -T PUT` (same image, same Glances)",
        "",
        "| image | migratio s | curl s | ratio | daemon peak RSS MiB | curls' peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    oo = of(records, "transfer_vs_curl")
    for size in sorted({r["size_mib"] for r in oo}):
        rows = of(oo, "transfer_vs_curl", size_mib=size)
        lines.append(
            f"| {size} MiB | {spread(r['migration_seconds'] for r in rows)} "
            f"| {spread(r['curl_seconds'] for r in rows)} "
            f"| {spread((r['ratio'] for r in rows), 3)} "
            f"| {spread((r['peak_rss_mib'] for r in rows), 0)} "
            f"| {spread((r['curl_peak_rss_mib'] for r in rows), 0)} |"
        )
    lines += [
        "",
        "### AWS: ebs-direct against the legacy path (download, convert, whole raw to S3)",
        "",
        "Images of random data (data = virtual size).",
        "",
        "| image | ebs-direct s | legacy s | ratio | ebs-direct peak RSS MiB "
        "| sent MiB (ebs / legacy) |",
        "|---|---|---|---|---|---|",
    ]
    aws = of(records, "aws_vs_legacy", image="random")
    for size in sorted({r["size_mib"] for r in aws}):
        rows = of(aws, "aws_vs_legacy", size_mib=size)
        lines.append(
            f"| {size} MiB | {spread(r['ebs_seconds'] for r in rows)} "
            f"| {spread(r['legacy_seconds'] for r in rows)} "
            f"| {spread((r['time_ratio'] for r in rows), 3)} "
            f"| {spread((r['ebs_peak_rss_mib'] for r in rows), 0)} "
            f"| {rows[0]['ebs_bytes_sent'] / MIB:.0f} / {rows[0]['legacy_bytes_sent'] / MIB:.0f} |"
        )
    return lines


def growth_ledger(records: list[Record]) -> list[str]:
    lines = [
        "### Intake rate and `migratio status` against ledger size",
        "",
        "Intake: jobs/s from Redis into the ledger by a real intake-only daemon "
        "(`intake_batch` 50), the ledger holding N migrations before the jobs arrive; "
        "baseline: a bare move-and-acknowledge loop on the same Redis, no ledger. "
        "`status`: the real command, default view, migratio's bytecode compiled "
        "(as installed); baseline: `python3 -c pass`.",
        "",
        "| ledger | intake SQLite jobs/s | intake PostgreSQL jobs/s | bare Redis jobs/s "
        "| status SQLite s | status PostgreSQL s | python3 -c pass s |",
        "|---|---|---|---|---|---|---|",
    ]
    intake = of(records, "intake_rate")
    ledger = _as_installed(of(records, "ledger_cost"))
    sizes = sorted(
        {r["prefill"] for r in intake} | {r["migrations"] for r in ledger if "migrations" in r}
    )
    for size in sizes:
        batch = max((r["batch"] for r in intake if r["prefill"] == size), default=0)

        def rate(name: str | None, at: int = size, chosen: int = batch) -> str:
            rows = of(intake, "intake_rate", prefill=at, batch=chosen, ledger=name)
            return spread((r["jobs_per_s"] for r in rows), 0)

        def status(name: str, at: int = size) -> str:
            return _figure(
                of(ledger, "ledger_cost", figure="status", ledger=name, migrations=at), 3
            )

        start = [
            r for r in of(ledger, "ledger_cost", figure="python_start") if _run_of(r, ledger, size)
        ]
        lines.append(
            f"| {size:,} | {rate('sqlite')} | {rate('postgresql')} | {rate(None)} "
            f"| {status('sqlite')} | {status('postgresql')} | {_figure(start, 3)} |"
        )
    return lines


def _run_of(record: Record, ledger: list[Record], migrations: int) -> bool:
    """Whether a ledger_cost record came from the run at ``migrations``."""
    return any(
        r["command"] == record["command"] and r.get("migrations") == migrations for r in ledger
    )


def render(
    records: list[Record],
    failures: list[str],
    machine: list[str],
    invocation: str,
    tiny: bool,
) -> str:
    lines = ["# Performance", ""]
    if tiny:
        lines += [
            "> **Tiny smoke run: these figures are not measurements.** This document was "
            f"produced by `{invocation}`: every benchmark once, at its smallest size "
            "(8 MiB images, a 1,000-migration ledger, one round), on a shared machine, "
            "to prove that the benchmarks and this document work (CI runs the same). "
            "The real figures come from a full run on a quiet machine (about an hour), "
            "which rewrites this file and its records (`docs/PERFORMANCE.jsonl`):\n>\n"
            ">     bench/all --rounds 3",
            "",
        ]
    lines += [
        "Every figure comes from one `bench/all` run on the machine described at the end "
        "(a benchmark run again by `bench/all --redo` is listed there with its own date "
        "and load), with its baseline measured in the same run. A figure is the median over the "
        "rounds, with min-max in parentheses. `bench/all` regenerates this whole document; "
        "each benchmark also runs alone (the command beside each goal).",
        "",
    ]
    if failures:
        lines += ["**Benchmarks that failed in this run** (their figures are missing):", ""]
        lines += [f"- `{failure}`" for failure in failures]
        lines.append("")
    lines += [
        "## Goals",
        "",
        "The goals of the performance issue; a goal not met is stated as such.",
        "",
        "| # | what | figure | baseline (same run) | goal | met | command |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [goal.row() for goal in goals(records)]
    lines += ["", "## How cost grows", ""]
    lines += growth_images(records)
    lines.append("")
    lines += growth_ledger(records)
    lines += ["", "## Machine and command", ""]
    lines += machine
    lines += [f"- command: `{invocation}`", ""]
    return "\n".join(lines)
