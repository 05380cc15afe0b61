"""The daemon and its ledger: ``run``, ``db upgrade``, ``db prune``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from migratio.cli.context import Context, json_option, one_line_errors, pass_context


@click.command()
@click.option("--until-idle", is_flag=True, help="exit when no migration is left to do")
@click.option(
    "--json", "as_json", is_flag=True, help="log one JSON object per line (log_format: json)"
)
@pass_context
@one_line_errors
def run(ctx: Context, until_idle: bool, as_json: bool) -> None:
    """Run the daemon: take Redis jobs, drive migrations, send feedback until
    SIGTERM/SIGINT; SIGHUP reloads the config and site files."""
    import logging
    import signal

    from migratio import logs
    from migratio.memory import limit_malloc_retention
    from migratio.systemd import Notifier

    limit_malloc_retention()  # before any thread exists
    settings = ctx.settings
    logs.configure(
        level=settings.daemon.log_level,
        library_level=settings.daemon.log_level_libraries,
        log_format="json" if as_json else settings.daemon.log_format,
    )
    notifier = Notifier.from_environment()
    from migratio.daemon import Daemon

    daemon = Daemon(settings, ctx.ledger(), notifier=notifier)

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("migratio").info("signal %d: stopping at the next checkpoint", signum)
        daemon.stop()

    def _reload(_signum: int, _frame: Any) -> None:
        daemon.request_reload()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    daemon.run(until_idle=until_idle)


@click.group()
def db() -> None:
    """Ledger commands: its schema, its retention."""


@db.command("upgrade")
@json_option
@pass_context
@one_line_errors
def db_upgrade(ctx: Context, as_json: bool) -> None:
    """Bring the ledger schema to the newest revision."""
    ctx.ledger().close()
    click.echo('{"schema": "up to date"}' if as_json else "ledger schema is up to date")


@db.command("prune")
@click.option(
    "--older-than",
    "days",
    required=True,
    type=click.IntRange(min=1),
    metavar="DAYS",
    help="prune migrations that ended more than DAYS days ago",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="append each pruned migration, as `show --json` prints it, to this file first",
)
@click.option("--dry-run", is_flag=True, help="say what would go, delete nothing")
@json_option
@pass_context
@one_line_errors
def db_prune(ctx: Context, days: int, archive: Path | None, dry_run: bool, as_json: bool) -> None:
    """Delete old ended migrations with their history, keeping those cleanup
    still needs, the newest done migration of each image on each route (the next
    version starts from it) and whole fan-out groups. Safe beside a running daemon."""
    from dataclasses import asdict
    from datetime import timedelta

    from migratio import pruning

    pruned = pruning.prune(ctx.ledger(), timedelta(days=days), archive, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({**asdict(pruned), "before": pruned.before.isoformat()}))
    else:
        click.echo(pruning.summary(pruned, archive))


COMMANDS = [run, db]
