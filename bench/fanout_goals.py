"""The fan-out rows of docs/PERFORMANCE.md's goals (issue 13): one read of the
source, the wall against the slowest single destination in the same run, with
and without capped links, and the outage."""

from __future__ import annotations

from bench.figures import MIB, Goal, Record, command, largest, of, percent, size_label, spread


def fanout_goals(records: list[Record]) -> list[Goal]:
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
                f"{all(r['aws_done_while_down'] for r in down)}), {size_label(down)}",
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
    return f"{size_label(runs)} to {', '.join(runs[0]['destinations'])}" if runs else "—"


def _fanout_wall(what: str, runs: list[Record]) -> Goal:
    busy = percent(r["machine_cpu_seconds"] / (r["cores"] * r["seconds"]) for r in runs)
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
