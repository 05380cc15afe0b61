"""The ``migratio`` command: parses arguments, calls ``operations``, prints."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from migratio import config, operations
from migratio.daemon import Daemon
from migratio.errors import ConfigError, MigratioError, UsageError
from migratio.ledger.store import Ledger
from migratio.machine import State
from migratio.text import printable

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(func: F) -> F:
    """Operators get one clear line on stderr and an exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"migratio: config error: {printable(exc)}", err=True)
            sys.exit(2)
        except UsageError as exc:
            click.echo(f"migratio: usage error: {printable(exc)}", err=True)
            sys.exit(2)
        except MigratioError as exc:
            click.echo(f"migratio: {printable(exc)}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class _Context:
    def __init__(self, config_path: str | None) -> None:
        self.path = config.config_path(config_path)
        self._settings: config.Settings | None = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.load_settings(self.path)
        return self._settings

    def ledger(self) -> Ledger:
        return operations.open_ledger(self.settings)

    def existing_ledger(self) -> Ledger:
        """For read-only commands: never creates a ledger nor changes its schema."""
        return operations.open_ledger(self.settings, migrate=False)


pass_context = click.make_pass_decorator(_Context)


@click.group()
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help=f"daemon config (default: ${config.CONFIG_ENV} or {config.DEFAULT_CONFIG_PATH})",
)
@click.version_option(package_name="migratio")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Migrate VM templates (cloud images) between cloud sites."""
    ctx.obj = _Context(config_path)


@main.command()
@click.option("--until-idle", is_flag=True, help="exit when no migration is left to do")
@pass_context
@_one_line_errors
def run(ctx: _Context, until_idle: bool) -> None:
    """Run the daemon: take Redis jobs, drive migrations, send feedback until SIGTERM/SIGINT."""
    settings = ctx.settings
    logging.basicConfig(
        level=settings.daemon.log_level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    daemon = Daemon(settings, ctx.ledger())

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("migratio").info("signal %d: stopping at the next checkpoint", signum)
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    daemon.run(until_idle=until_idle)


@main.command()
@click.option("--image", "image_id", required=True, help="source image id")
@click.option("--from", "source", help="source site id (default: the daemon's name)")
@click.option("--to", "destination", required=True, help="destination site id")
@click.option(
    "--via-redis",
    is_flag=True,
    help="push a job onto the source site's Redis queue instead; prints the job id",
)
@pass_context
@_one_line_errors
def submit(
    ctx: _Context, image_id: str, source: str | None, destination: str, via_redis: bool
) -> None:
    """Queue a migration and print its id."""
    source = source or ctx.settings.daemon.name
    operations.check_sites(ctx.settings, source, destination)
    if via_redis:
        click.echo(operations.submit_via_redis(ctx.settings, image_id, source, destination))
        return
    migration = operations.submit(ctx.settings, ctx.ledger(), image_id, source, destination)
    click.echo(migration.id)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([state.value for state in State]),
    help="only these states (repeatable)",
)
@pass_context
@_one_line_errors
def status(ctx: _Context, as_json: bool, states: tuple[str, ...]) -> None:
    """List migrations, newest first."""
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


@main.command()
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
@_one_line_errors
def show(ctx: _Context, migration_id: str, as_json: bool) -> None:
    """Every field of one migration and its full transition history."""
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


@main.command()
@click.argument("migration_id")
@pass_context
@_one_line_errors
def retry(ctx: _Context, migration_id: str) -> None:
    """Queue a failed or cancelled migration again."""
    migration = operations.retry(ctx.ledger(), migration_id)
    click.echo(f"{migration.id} {migration.state}")


@main.command()
@click.argument("migration_id")
@pass_context
@_one_line_errors
def cancel(ctx: _Context, migration_id: str) -> None:
    """Cancel a migration and remove what it created."""
    migration, ended = operations.cancel(ctx.settings, ctx.ledger(), migration_id)
    if ended:
        click.echo(f"{migration.id} {migration.state}")
    else:
        click.echo(
            f"{migration.id} cancel requested; {migration.lease_owner} stops it "
            "at its next checkpoint"
        )


@main.group()
def db() -> None:
    """Ledger schema commands."""


@db.command("upgrade")
@pass_context
@_one_line_errors
def db_upgrade(ctx: _Context) -> None:
    """Bring the ledger schema to the newest revision."""
    ctx.ledger().close()
    click.echo("ledger schema is up to date")


def _progress_text(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1%}"


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
