"""Read-only commands: ``status`` (with a live ``--watch`` view) and ``show``.

They never create a ledger or change its schema, and print remote text (image
ids and names, messages) only through ``printable``; ``--json`` stays exact.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

from migratio.cli.context import Context, json_option, one_line_errors, pass_context
from migratio.machine import State
from migratio.text import printable

if TYPE_CHECKING:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    from migratio.ledger.listing import Listing
    from migratio.ledger.types import MigrationFilter

DEFAULT_LIMIT = 50
MIB = 1024 * 1024
COLUMNS = ("ID", "IMAGE", "FROM → TO", "STATE", "PROGRESS", "AGE", "ERROR")
# The table is laid out for at least this width, wrapping only beyond it.
MIN_WIDTH = 100


@click.command()
@json_option
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([state.value for state in State]),
    help="only these states (repeatable)",
)
@click.option("--image", "image_id", help="only migrations of this source image id")
@click.option("--job", "job_id", help="only the migration this Redis job id created or joined")
@click.option("--site", help="only migrations from or to this site")
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
    help="newest N migrations",
)  # fmt: skip
@click.option("--all", "show_all", is_flag=True, help="every migration (no limit)")
@click.option("--watch", is_flag=True, help="a live view, refreshed every second, until Ctrl-C")
@pass_context
@one_line_errors
def status(
    ctx: Context,
    as_json: bool,
    states: tuple[str, ...],
    image_id: str | None,
    job_id: str | None,
    site: str | None,
    limit: int,
    show_all: bool,
    watch: bool,
) -> None:
    """List migrations, newest first: what each is doing, its progress and its error."""
    from migratio.ledger.types import MigrationFilter

    wanted = MigrationFilter(states=states, image_id=image_id, job_id=job_id, site=site)
    listing = ctx.listing()
    shown = None if show_all else limit
    slots = ctx.slots()
    try:
        if watch:
            _watch(listing, wanted, shown, slots)
            return
        rows, total = _rows(listing, wanted, shown, slots)
    finally:
        listing.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    _print_table(rows)
    if total > len(rows):
        click.echo(f"showing the newest {len(rows)} of {total}; --limit N or --all for more")


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Plain text where it looks the same as rich's table (start-up time); rich otherwise."""
    from migratio.cli.columns import plain_table, terminal_width

    width = terminal_width(least=MIN_WIDTH)
    stdout = click.get_text_stream("stdout")
    grouped = _grouped(rows)
    header = (*COLUMNS, "GROUP") if grouped else COLUMNS
    cells = [_cells(row, grouped) for row in rows]
    lines = plain_table(header, cells, width, bold=stdout.isatty())
    if lines is not None:
        click.echo("\n".join(lines))
        return
    from rich.console import Console

    Console(width=max(MIN_WIDTH, Console().width)).print(status_table(rows))


def status_table(rows: list[dict[str, Any]], rates: dict[str, float] | None = None) -> Table:
    """The status view; with ``rates`` (bytes/s by migration id), a live one with
    a progress bar, the speed and the time left of each running migration."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    columns = list(COLUMNS)
    if rates is not None:
        columns[4:5] = ["PROGRESS", "SPEED", "ETA"]
    grouped = _grouped(rows)
    if grouped:
        columns.append("GROUP")
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells: list[Any] = _cells(row, grouped)
        if rates is not None:
            rate = rates.get(row["id"]) if row["activity"] == "running" else None
            cells[4:5] = [_bar(row["progress"]), _speed_text(rate), _eta_text(row, rate)]
        # Text, not str: rich would read "[...]" in an image id as markup.
        table.add_row(*(cell if isinstance(cell, ProgressBar) else Text(cell) for cell in cells))
    return table


def _grouped(rows: list[dict[str, Any]]) -> bool:
    """Whether a GROUP column is shown: some row is a member of a fan-out group."""
    return any(row.get("group") for row in rows)


def _cells(row: dict[str, Any], grouped: bool = False) -> list[str]:
    """One status row's cells, remote text escaped; with ``grouped``, its fan-out
    group last (the group id's first 8 characters, shared by its members)."""
    image = row["image"] if not row["name"] else f"{row['name']} ({row['image'][:8]})"
    cells = [
        row["id"][:8],
        image,
        f"{row['source_site']} → {row['dest_site']}",
        _state_text(row),
        _progress_text(row["progress"]),
        _age_text(row["age_seconds"]),
        _short(row["error"]) if row["state"] != State.DONE else "",
    ]
    if grouped:
        cells.append((row.get("group") or "")[:8])
    return [printable(cell) for cell in cells]


@click.command()
@click.argument("migration_id")
@json_option
@pass_context
@one_line_errors
def show(ctx: Context, migration_id: str, as_json: bool) -> None:
    """Every field of one migration, the time spent in each state, its full
    transition history and its artifacts."""
    from migratio import reports

    ledger = ctx.existing_ledger()
    details = reports.describe(ledger, ledger.find(migration_id))
    if as_json:
        click.echo(json.dumps(details, indent=2, ensure_ascii=False))
        return
    # Every line goes through printable(): ids, names and messages come from jobs
    # and clouds, and must not recolour the terminal or forge a line. Values are
    # shown as JSON (null, false), never as Python's None/False.
    for key, value in details.items():
        if key not in ("history", "artifacts", "error", "durations", "siblings"):
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            click.echo(printable(f"{key:17} {shown}"))
    if details["siblings"]:
        click.echo("siblings (same group, same read of the source):")
        for sibling in details["siblings"]:
            line = f"  {sibling['id']}  {sibling['dest_site']:<16} {sibling['state']}"
            click.echo(printable(line))
    click.echo("time in each state:")
    for state, seconds in details["durations"].items():
        click.echo(f"  {state:<11} {seconds:10.1f} s")
    click.echo("history:")
    for row in details["history"]:
        click.echo(
            printable(
                f"  {row['at']}  {row['from'] or '-':>11} → {row['to']:<11} "
                f"{row['host']}:{row['pid']}  {row['message']}"
            )
        )
    click.echo("artifacts:")
    for artifact in details["artifacts"]:
        line = f"  {artifact['kind']:10} {artifact['status']:8} {artifact['ref']}"
        if artifact["status"] == "present" and artifact["last_error"]:
            line += f"  (cannot remove yet: {artifact['last_error']})"
        click.echo(printable(line))


def _rows(
    listing: Listing, wanted: MigrationFilter, limit: int | None, slots: dict[str, int]
) -> tuple[list[dict[str, Any]], int]:
    from migratio import reports

    migrations, total = listing.newest(wanted, limit)
    full = listing.full_sites(slots)
    return [reports.summary(m, full=full) for m in migrations], total


def _watch(
    listing: Listing, wanted: MigrationFilter, limit: int | None, slots: dict[str, int]
) -> None:
    """Redraw in place once a second; speed from the bytes done between redraws."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    seen: dict[str, tuple[float, int]] = {}
    rates: dict[str, float] = {}
    with Live(auto_refresh=False, screen=False) as live:
        try:
            while True:
                rows, total = _rows(listing, wanted, limit, slots)
                now = time.monotonic()
                for row in rows:
                    before = seen.get(row["id"])
                    if before is not None and now > before[0] and row["activity"] == "running":
                        rates[row["id"]] = (row["bytes_done"] - before[1]) / (now - before[0])
                    seen[row["id"]] = (now, row["bytes_done"])
                footer = Text(f"{len(rows)} of {total} migrations · Ctrl-C to leave", style="dim")
                live.update(Group(status_table(rows, rates), footer), refresh=True)
                time.sleep(1.0)
        except KeyboardInterrupt:
            return


def _state_text(row: dict[str, Any]) -> str:
    match row["activity"]:
        case "waiting to retry":
            return f"{row['state']} (retry in {row['retry_in_seconds']:.0f}s)"
        case "paused" | "waiting" | "waiting for a slot":
            return f"{row['state']} ({row['activity']})"
        case _:
            return str(row["state"])


def _bar(value: float | None) -> ProgressBar:
    from rich.progress_bar import ProgressBar

    return ProgressBar(total=1.0, completed=value or 0.0, width=20)


def _speed_text(rate: float | None) -> str:
    return "-" if not rate or rate <= 0 else f"{rate / MIB:.0f} MiB/s"


def _eta_text(row: dict[str, Any], rate: float | None) -> str:
    total = row["bytes_total"]
    if not rate or rate <= 0 or not total or row["activity"] != "running":
        return "-"
    return _age_text(max(0.0, (total - row["bytes_done"]) / rate))


def _short(error: str | None) -> str:
    from migratio.reports import SHORT_ERROR

    if not error:
        return ""
    return error if len(error) <= SHORT_ERROR else error[: SHORT_ERROR - 1] + "…"


def _progress_text(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1%}"


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


COMMANDS = [status, show]
