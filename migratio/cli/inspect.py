"""Read-only commands: ``status`` and ``show``. They never create a ledger or
change its schema, and print remote text only through ``printable``."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from migratio.cli.context import Context, one_line_errors, pass_context
from migratio.machine import State
from migratio.text import printable


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([state.value for state in State]),
    help="only these states (repeatable)",
)
@pass_context
@one_line_errors
def status(ctx: Context, as_json: bool, states: tuple[str, ...]) -> None:
    """List migrations, newest first."""
    from migratio import operations

    rows = [operations.summary(m) for m in ctx.existing_ledger().migrations(states or None)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "IMAGE", "FROM → TO", "STATE", "PROGRESS", "AGE"):
        table.add_column(column)
    for row in rows:
        # Text, not str: rich would read "[...]" in an image id as markup.
        table.add_row(
            *(
                Text(printable(cell))
                for cell in (
                    row["id"][:8],
                    row["image"],
                    f"{row['source_site']} → {row['dest_site']}",
                    row["state"],
                    _progress_text(row["progress"]),
                    _age_text(row["age_seconds"]),
                )
            )
        )
    Console(width=max(100, Console().width)).print(table)


@click.command()
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
@one_line_errors
def show(ctx: Context, migration_id: str, as_json: bool) -> None:
    """Every field of one migration and its full transition history."""
    from migratio import operations

    ledger = ctx.existing_ledger()
    details = operations.describe(ledger, ledger.find(migration_id))
    if as_json:
        click.echo(json.dumps(details, indent=2, ensure_ascii=False))
        return
    # Every line goes through printable(): ids, names and messages come from jobs
    # and clouds, and must not recolour the terminal or forge a line.
    for key, value in details.items():
        if key not in ("history", "artifacts", "error"):
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
            click.echo(printable(f"{key:17} {shown}"))
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


def _progress_text(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1%}"


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


COMMANDS = [status, show]
