"""docs/PERFORMANCE.md from the JSON lines the benchmarks printed (bench/all).

Rendering only: the goals table (bench/goals.py), the tables of how cost grows
with image and ledger size, and the machine the run was made on.
"""

from __future__ import annotations

from bench.figures import MIB, Record, as_installed, of, spread, summary
from bench.goals import goals


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
    ledger = as_installed(of(records, "ledger_cost"))
    sizes = sorted(
        {r["prefill"] for r in intake} | {r["migrations"] for r in ledger if "migrations" in r}
    )
    for size in sizes:
        batch = max((r["batch"] for r in intake if r["prefill"] == size), default=0)

        def rate(name: str | None, at: int = size, chosen: int = batch) -> str:
            rows = of(intake, "intake_rate", prefill=at, batch=chosen, ledger=name)
            return spread((r["jobs_per_s"] for r in rows), 0)

        def status(name: str, at: int = size) -> str:
            rows = of(ledger, "ledger_cost", figure="status", ledger=name, migrations=at)
            return summary(rows, 3)

        start = [
            r for r in of(ledger, "ledger_cost", figure="python_start") if _run_of(r, ledger, size)
        ]
        lines.append(
            f"| {size:,} | {rate('sqlite')} | {rate('postgresql')} | {rate(None)} "
            f"| {status('sqlite')} | {status('postgresql')} | {summary(start, 3)} |"
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
