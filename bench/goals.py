"""The goals table of docs/PERFORMANCE.md: which records answer each goal of the
performance issue, and the baseline measured beside it in the same run. Each goal
reads the largest size its benchmark ran at, so a ``--tiny`` run renders the same
table from the smallest sizes."""

from __future__ import annotations

from bench.fanout_goals import fanout_goals
from bench.figures import (
    MIB,
    Goal,
    Record,
    as_installed,
    command,
    largest,
    of,
    percent,
    size_label,
    spread,
    summary,
    summary_values,
    without_bytecode,
)

OVERLAP_GOAL_MIB = 1024  # goal 3 is set for an image of 1 GiB of data


def goals(records: list[Record]) -> list[Goal]:
    found: list[Goal] = []
    ssh = largest(of(records, "ssh_vs_scp"), "size_mib")
    found.append(
        Goal(
            "1",
            f"SSH site: receive / scp, {size_label(ssh)}",
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
    found.extend(fanout_goals(records))
    return found


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
                f"AWS overlap: ebs-direct wall / max(download, upload), {size_label(runs)} of data",
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
        f"; all cores busy {percent(r[overlapped] for r in records)}% "
        f"overlapped, {percent(r[alone] for r in records)}% upload alone"
    )


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
    compiled, uncompiled = as_installed(ledger), without_bytecode(ledger)
    start = of(compiled, "ledger_cost", figure="python_start")[-1:]
    baseline = f"python3 -c pass {summary(start, 3)} s"
    found = []

    def but(figures: list[Record]) -> str:
        """The same figure without bytecode, where the run measured it."""
        return f"; no bytecode: {summary(figures, 3)} s" if figures else ""

    helps = of(compiled, "ledger_cost", figure="help")[-1:]
    slow_helps = of(uncompiled, "ledger_cost", figure="help")[-1:]
    found.append(
        Goal(
            "5",
            "`migratio --help`",
            summary_values(helps),
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
                summary_values(status),
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
                summary_values(cost),
                "ms",
                bound,
                "—",
                command(cost),
                2,
            )
        )
    return found


def _holding(records: list[Record]) -> list[Goal]:
    """The paths the issue found at their limit: they must stay there."""
    oo = largest(of(records, "transfer_vs_curl"), "size_mib")
    scattered = of(records, "aws_vs_legacy", image="scattered-1GiB-virtual") or largest(
        of(records, "aws_vs_legacy"), "size_mib"
    )
    image = "1 GiB virtual, scattered data" if scattered and not scattered[0]["size_mib"] else ""
    image = image or size_label(scattered)
    return [
        Goal(
            "—",
            f"(holding) O→O stream / curl GET piped into curl PUT, {size_label(oo)}",
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
