"""Run every benchmark against one test bed and write docs/PERFORMANCE.md.

    bench/all [--rounds 3] [--out docs/PERFORMANCE.md]
    bench/all --tiny [--out PATH]          # each bench once, smallest sizes, in lanes (CI)
    bench/all --render-only RECORDS.jsonl  # the document again from a run's records
    bench/all --redo ledger_cost.py [--redo ...]  # re-run these, keep the other records

One test bed ($MIGRATIO_TESTBED_DIR when it points at a running one, else one
started and stopped here) and one PostgreSQL ($MIGRATIO_TEST_POSTGRES_URL, else
a private cluster) serve every benchmark, each run as its own process exactly as
an engineer would run it alone. Their JSON lines (one per round, see
bench/rounds.py) are kept in RECORDS (default: the output's name with
``.jsonl``), then rendered by bench/performance_report.py. Progress goes to
stderr. A ``--tiny`` run writes build/performance-tiny.md unless told otherwise,
so it never overwrites the committed document by accident. Exits 1 if any
benchmark failed (the document then says which). ``--redo`` re-runs only the
named scripts' steps and replaces their records in RECORDS; the document lists
each re-run with its own date, commit and load under the machine it ran on.

A full run is one benchmark at a time: its figures need the machine to
themselves. A ``--tiny`` run's figures mean nothing anyway, so it runs three
lanes at once, one per peer the benchmarks would trip each other up on (moto,
which the AWS benchmarks reset; the PostgreSQL database the ledger benchmarks
fill; the Glance and SSH transfers), one benchmark at a time in each: CI waits
for the longest lane, not for the sum.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "support" / "testbed"))

import testbed_lib  # noqa: E402

from bench.performance_report import render  # noqa: E402

IMAGE_SIZES_MIB = (64, 256, 1024, 4096)
LEDGER_SIZES = (1_000, 10_000, 100_000)
# The fan-out with links slower than this machine: four destinations at 24 MiB/s
# keep its two cores below full (its peers cost more CPU than migratio does).
LINK_MIB_S = 24
TINY_LINK_MIB_S = 64
FULL_OUT = ROOT / "docs" / "PERFORMANCE.md"
TINY_OUT = ROOT / "build" / "performance-tiny.md"


@dataclass(frozen=True)
class Step:
    script: str
    args: tuple[str, ...]
    lane: str = "serial"  # steps of one lane run one at a time, lanes at once

    @property
    def command(self) -> str:
        return shlex.join(["python3", f"bench/{self.script}", *self.args])


def plan(tiny: bool, rounds: int) -> list[Step]:
    """Every benchmark, with the sizes the document shows (one of each when tiny)."""
    if tiny:
        # Lanes by shared peer: the AWS benchmarks reset moto between migrations;
        # the ledger ones fill the same PostgreSQL database; the rest copy between
        # the bed's Glances (each its own images, so no dedup across lanes).
        return [
            Step("transfer_vs_curl.py", ("--tiny",), "glance"),
            Step("aws_vs_legacy.py", ("--tiny",), "moto"),
            Step("ssh_vs_scp.py", ("--tiny",), "glance"),
            Step("aws_scaling.py", ("--tiny",), "moto"),
            Step("concurrency.py", ("--tiny",), "moto"),
            Step("intake_rate.py", ("--tiny", "--prefill", "1000"), "postgres"),
            Step("ledger_cost.py", ("--tiny",), "postgres"),
            Step("fanout.py", ("--tiny",), "moto"),
            Step("fanout.py", ("--tiny", "--link-mib-s", str(TINY_LINK_MIB_S)), "moto"),
        ]
    r = ("--rounds", str(rounds))
    steps = [Step("transfer_vs_curl.py", ("--size-mib", str(s), *r)) for s in IMAGE_SIZES_MIB]
    steps += [Step("aws_vs_legacy.py", ("--size-mib", str(s), *r)) for s in IMAGE_SIZES_MIB]
    steps += [
        Step("aws_vs_legacy.py", r),
        Step("ssh_vs_scp.py", ("--size-mib", "1024", *r)),
        Step("aws_scaling.py", r),
        Step("concurrency.py", ("--size-mib", "1024", *r)),
        Step("fanout.py", ("--size-mib", "1024", *r)),
        Step("fanout.py", ("--size-mib", "1024", "--link-mib-s", str(LINK_MIB_S), *r)),
    ]
    steps += [Step("intake_rate.py", ("--prefill", str(n), *r)) for n in LEDGER_SIZES]
    ledger_rounds = ("--rounds", str(max(rounds, 5)))
    steps += [
        Step("ledger_cost.py", ("--migrations", str(n), *ledger_rounds)) for n in LEDGER_SIZES
    ]
    return steps


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] bench/all: {message}", file=sys.stderr, flush=True)


def run_step(step: Step, env: dict[str, str]) -> tuple[list[dict[str, Any]], bool]:
    """Run one benchmark; its JSON lines (each told its command) and whether it exited 0.
    Its other lines go to stderr, whole lines, prefixed with its script's name."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / step.script), *step.args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    records = []
    for line in process.stdout:
        if line.startswith("{"):
            records.append({**json.loads(line), "command": step.command})
        else:
            print(f"    {step.script}: {line.rstrip()}", file=sys.stderr, flush=True)
    return records, process.wait() == 0


def run_lane(
    steps: list[tuple[int, Step]], total: int, env: dict[str, str]
) -> list[tuple[int, list[dict[str, Any]], bool]]:
    """One lane's steps, one at a time: (number, records, exited 0) of each."""
    done = []
    for number, step in steps:
        progress(f"({number}/{total}) {step.command}")
        began = time.monotonic()
        found, ok = run_step(step, env)
        done.append((number, found, ok))
        progress(
            f"({number}/{total}) {'done' if ok else 'FAILED'} in "
            f"{time.monotonic() - began:.1f} s, {len(found)} records"
        )
    return done


def machine() -> list[str]:
    memory = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {commit or 'unknown'}",
        f"- CPU: {os.cpu_count()} x {models[0] if models else platform.processor()}",
        f"- memory: {int(memory) / 2**20:.1f} GiB",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- load average at start: {load}",
    ]


def run_all(args: argparse.Namespace, records_path: Path, invocation: str) -> int:
    steps = [s for s in plan(args.tiny, args.rounds) if not args.redo or s.script in args.redo]
    if not steps:
        sys.exit(f"bench/all: no benchmark named {', '.join(args.redo)}")
    header = {"bench": "_run", "invocation": invocation, "tiny": args.tiny, "machine": machine()}
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="migratio-bench-all-") as scratch:
        scratch_dir = Path(scratch)
        env = dict(os.environ)
        reuse = os.environ.get("MIGRATIO_TESTBED_DIR")
        bed_dir = Path(reuse) if reuse else scratch_dir / "bed"
        progress(f"test bed {'reused' if reuse else 'starting'} in {bed_dir}")
        testbed_lib.up(bed_dir)
        env["MIGRATIO_TESTBED_DIR"] = str(bed_dir)
        own_postgres = "MIGRATIO_TEST_POSTGRES_URL" not in os.environ
        if own_postgres:
            progress("starting a private PostgreSQL")
            env["MIGRATIO_TEST_POSTGRES_URL"] = testbed_lib.start_postgres(scratch_dir / "pg")
        started = time.monotonic()
        lanes: dict[str, list[tuple[int, Step]]] = {}
        for number, step in enumerate(steps, 1):
            lanes.setdefault(step.lane, []).append((number, step))
        try:
            with ThreadPoolExecutor(len(lanes)) as pool:
                ran = [
                    outcome
                    for lane in pool.map(lambda s: run_lane(s, len(steps), env), lanes.values())
                    for outcome in lane
                ]
            # Records and failures in the plan's order, whichever lane ended first.
            for number, found, ok in sorted(ran, key=lambda outcome: outcome[0]):
                records += found
                if not ok:
                    failures.append(steps[number - 1].command)
        finally:
            if own_postgres:
                testbed_lib.stop_postgres(scratch_dir / "pg")
            if not reuse:
                testbed_lib.down(bed_dir)
    header["failures"] = failures
    header["seconds"] = seconds = round(time.monotonic() - started, 1)
    if args.redo:
        header, records = _merged(records_path, header, records, {s.script for s in steps})
    records_path.parent.mkdir(parents=True, exist_ok=True)
    with records_path.open("w", encoding="utf-8") as out:
        for record in [header, *records]:
            out.write(json.dumps(record) + "\n")
    progress(f"benchmarks took {seconds} s; records in {records_path}")
    return 1 if failures else 0


def _read_records(records_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's header and its records."""
    lines = [json.loads(line) for line in records_path.read_text().splitlines() if line]
    return next(r for r in lines if r["bench"] == "_run"), [
        r for r in lines if r["bench"] != "_run"
    ]


def _merged(
    records_path: Path, redo: dict[str, Any], fresh: list[dict[str, Any]], scripts: set[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The earlier run's header and records with those of ``scripts`` replaced by
    ``fresh``; the header lists the re-run (its own machine line, commit, load)."""
    header, records = _read_records(records_path)
    header["failures"] = [f for f in header["failures"] if _script(f) not in scripts]
    header["failures"] += redo["failures"]
    # An earlier re-run whose every record this one replaces is no longer shown.
    earlier = [r for r in header.get("redone", []) if not _redone(r) <= scripts]
    header["redone"] = [*earlier, redo]
    return header, [r for r in records if _script(r["command"]) not in scripts] + fresh


def _redone(redo: dict[str, Any]) -> set[str]:
    """The scripts a re-run named (``--redo SCRIPT`` in its invocation)."""
    words = shlex.split(redo["invocation"])
    return {script for flag, script in itertools.pairwise(words) if flag == "--redo"}


def _script(command: str) -> str:
    """The benchmark a step's command runs (``Step.command``): its script's name."""
    return shlex.split(command)[1].removeprefix("bench/")


def write_document(records_path: Path, out: Path) -> None:
    header, records = _read_records(records_path)
    machine_lines = list(header["machine"])
    for redo in header.get("redone", []):
        date = redo["machine"][0].removeprefix("- date: ")
        load = redo["machine"][-1].removeprefix("- ")
        machine_lines.append(f"- re-run by `{redo['invocation']}`: {date}; {load}")
    document = render(
        records, header["failures"], machine_lines, header["invocation"], header["tiny"]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    progress(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="each bench once, smallest sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help=f"default {FULL_OUT} ({TINY_OUT} if --tiny)")
    parser.add_argument("--records", type=Path, help="default: --out with .jsonl")
    parser.add_argument("--render-only", type=Path, metavar="RECORDS", help="no benchmarks")
    parser.add_argument(
        "--redo",
        action="append",
        metavar="SCRIPT",
        help="re-run only this benchmark (e.g. ledger_cost.py), keeping the other records",
    )
    args = parser.parse_args()
    out = (args.out or (TINY_OUT if args.tiny else FULL_OUT)).resolve()
    if args.render_only:
        write_document(args.render_only, out)
        return
    records_path = (args.records or out.with_suffix(".jsonl")).resolve()
    invocation = shlex.join(["bench/all", *sys.argv[1:]])
    status = run_all(args, records_path, invocation)
    write_document(records_path, out)
    sys.exit(status)


if __name__ == "__main__":
    main()
