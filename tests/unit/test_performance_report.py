"""docs/PERFORMANCE.md's rendering (bench/performance_report.py, bench/goals.py) from hand-made
records: which size a goal reads, median and range, met or not, and a row per
size in the growth tables. The benchmarks themselves run in
tests/e2e/test_benchmarks.py."""

from __future__ import annotations

from typing import Any

from bench.figures import spread
from bench.performance_report import render

MIB = 1 << 20


def transfer(size: int, ratio: float, round_number: int = 0) -> dict[str, Any]:
    return {
        "bench": "transfer_vs_curl",
        "size_mib": size,
        "round": round_number,
        "curl_seconds": 1.0,
        "curl_peak_rss_mib": 20.0,
        "migration_seconds": ratio,
        "peak_rss_mib": 110.0,
        "ratio": ratio,
        "command": f"python3 bench/transfer_vs_curl.py --size-mib {size}",
    }


def ssh(ratio: float, round_number: int) -> dict[str, Any]:
    return {
        "bench": "ssh_vs_scp",
        "size_mib": 1024,
        "round": round_number,
        "scp_seconds": 3.0,
        "receive_seconds": 3.0 * ratio,
        "ratio": ratio,
        "command": "python3 bench/ssh_vs_scp.py --size-mib 1024",
    }


def goal_row(document: str, starts: str) -> list[str]:
    line = next(line for line in document.splitlines() if line.startswith(f"| {starts}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_spread_is_median_then_range_and_one_value_alone() -> None:
    assert spread([1.0, 3.0, 2.0]) == "2.00 (1.00-3.00)"
    assert spread([1.5]) == "1.50"
    assert spread([2.0, 2.0], 0) == "2"
    assert spread([]) == "not measured"


def test_a_goal_reads_its_rounds_median_against_its_bound() -> None:
    met = render([ssh(1.0, 0), ssh(1.05, 1), ssh(1.5, 2)], [], [], "bench/all", False)
    assert goal_row(met, "1 ")[2:6] == ["1.050 (1.000-1.500)", "scp 3.00 s", "≤ 1.1", "met"]
    missed = render([ssh(1.2, 0), ssh(1.3, 1), ssh(1.0, 2)], [], [], "bench/all", False)
    assert goal_row(missed, "1 ")[5] == "**not met**"


def test_missing_benchmarks_say_so_instead_of_a_figure() -> None:
    document = render([], ["python3 bench/ssh_vs_scp.py"], [], "bench/all", False)
    assert goal_row(document, "1 ")[2] == "not measured"
    assert "- `python3 bench/ssh_vs_scp.py`" in document


def test_growth_has_a_row_per_size_and_the_goal_reads_the_largest() -> None:
    records = [transfer(size, size / 1024) for size in (64, 256, 1024, 4096)]
    document = render(records, [], ["- machine"], "bench/all", False)
    rows = [line for line in document.splitlines() if line.split("|")[1:2] == [" 64 MiB "]]
    assert len(rows) == 1 and "0.062" in rows[0]
    for size in (256, 1024, 4096):
        assert f"| {size} MiB |" in document
    assert "4096 MiB | 4.000 |" in document
    assert "Tiny smoke run" not in document


def test_a_tiny_run_is_headed_as_such() -> None:
    document = render([], [], [], "bench/all --tiny --out x.md", True)
    assert document.splitlines()[2].startswith("> **Tiny smoke run")
    assert "bench/all --rounds 3" in document


def test_start_up_goals_read_the_compiled_runs_and_show_the_others() -> None:
    def figure(name: str, median: float, bytecode: bool, **params: Any) -> dict[str, Any]:
        return {
            "bench": "ledger_cost",
            "figure": name,
            "bytecode": bytecode,
            **params,
            "median": median,
            "min": median,
            "max": median,
            "command": "python3 bench/ledger_cost.py",
        }

    sqlite = {"ledger": "sqlite", "migrations": 100_000}
    records = [
        figure("python_start", 0.03, True),
        figure("help", 0.10, True),
        figure("status", 0.20, True, **sqlite),
        figure("python_start", 0.03, False),
        figure("help", 0.14, False),
        figure("status", 0.35, False, **sqlite),
    ]
    document = render(records, [], [], "bench/all", False)
    helps = next(row for row in _goal_rows(document) if row[1] == "`migratio --help`")
    assert helps[2:6] == [
        "0.100 s",
        "python3 -c pass 0.030 s; no bytecode: 0.140 s",
        "≤ 0.25 s",
        "met",
    ]
    status = next(row for row in _goal_rows(document) if "status`, 100,000" in row[1])
    assert status[2:6] == [
        "0.200 s",
        "python3 -c pass 0.030 s; no bytecode: 0.350 s",
        "≤ 0.3 s",
        "met",
    ]
    assert "| 100,000 |" in document and "| 0.200 | not measured | 0.030 |" in document


def _goal_rows(document: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in document.splitlines()
        if line.startswith("| 5 ")
    ]


def overlap(busy: float, alone_busy: float, round_number: int, size: int = 1024) -> dict[str, Any]:
    return {
        "bench": "aws_vs_legacy",
        "image": "random",
        "size_mib": size,
        "round": round_number,
        "ebs_seconds": 12.0,
        "legacy_seconds": 20.0,
        "time_ratio": 0.6,
        "ebs_peak_rss_mib": 130.0,
        "ebs_bytes_sent": 1024 * MIB,
        "legacy_bytes_sent": 1024 * MIB,
        "bytes_vs_nonzero": 1.0,
        "legacy_download_seconds": 4.0,
        "upload_alone_seconds": 10.0,
        "ebs_machine_busy": busy,
        "upload_alone_machine_busy": alone_busy,
        "command": f"python3 bench/aws_vs_legacy.py --size-mib {size}",
    }


def test_the_overlap_goal_says_how_busy_the_cores_were() -> None:
    document = render([overlap(0.97, 0.70, 0), overlap(0.99, 0.74, 1)], [], [], "bench/all", False)
    row = goal_row(document, "3 ")
    assert row[2] == "1.20"
    assert row[3].endswith("; all cores busy 98 (97-99)% overlapped, 72 (70-74)% upload alone")


def test_the_overlap_goal_reads_1_gib_of_data_and_shows_the_largest_run_too() -> None:
    records = [overlap(0.9, 0.7, n, size) for size in (256, 1024, 4096) for n in (0, 1)]
    rows = [r for r in render(records, [], [], "bench/all", False).splitlines() if "overlap" in r]
    assert ["1024 MiB" in rows[0], "4096 MiB" in rows[1], len(rows)] == [True, True, 2]


def fanout(ratio: float, round_number: int, link: int | None = None) -> dict[str, Any]:
    record = {
        "bench": "fanout",
        "size_mib": 1024,
        "round": round_number,
        "image_bytes": 1024 * MIB,
        "destinations": ["site-b", "aws-a"],
        "read_ratio": 1.0,
        "seconds": 20.0 * ratio,
        "slowest_single": "aws-a",
        "slowest_single_seconds": 20.0,
        "wall_ratio": ratio,
        "verified": 2,
        "machine_cpu_seconds": 20.0 * ratio,  # one of two cores
        "cores": 2,
        "command": "python3 bench/fanout.py --size-mib 1024",
    }
    return record if link is None else {**record, "link_mib_s": link}


def test_the_capped_fan_out_is_a_row_of_its_own_beside_the_uncapped_one() -> None:
    records = [fanout(2.2, 0), fanout(2.4, 1), fanout(1.05, 0, link=24), fanout(1.1, 1, link=24)]
    document = render(records, [], [], "bench/all", False)
    rows = [r for r in document.splitlines() if r.startswith("| F | fan-out") and "wall /" in r]
    uncapped, capped = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert uncapped[2:6:3] == ["2.300 (2.200-2.400)", "**not met**"]
    assert "capped at 24 MiB/s" in capped[1]
    assert capped[2:6:3] == ["1.075 (1.050-1.100)", "met"]
    assert capped[3].endswith("verified 2; all cores busy 50% in the fan-out")


def test_the_fan_out_row_names_the_wall_the_peers_cpu_alone_sets() -> None:
    """Peers measured on the same cores: their CPU over all cores is a floor for
    the wall, shown against the slowest single (rounds without it show none)."""
    records = [{**fanout(2.2, 0), "peers_cpu_seconds": 44.0}, fanout(2.4, 1)]
    records.append({**fanout(2.3, 2), "peers_cpu_seconds": 52.0})
    document = render(records, [], [], "bench/all", False)
    (row,) = [r for r in document.splitlines() if r.startswith("| F | fan-out") and "wall /" in r]
    assert (
        row.split("|")[4]
        .strip()
        .endswith(
            "all cores busy 50% in the fan-out; the peers' CPU alone, over all 2 cores: "
            "1.20 (1.10-1.30)x the slowest single"
        )
    )
