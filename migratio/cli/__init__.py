"""The ``migratio`` command: parses arguments, calls ``operations``, prints.

One module per group of commands; each imports what it needs only when it runs,
so ``migratio --help`` does not load the cloud SDKs, Redis or the supervisor.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from migratio.cli.context import ERROR_LINE_LIMIT, EXIT_USAGE, Context, config_option
from migratio.config_path import CONFIG_ENV, DEFAULT_CONFIG_PATH
from migratio.text import one_line, printable


class OneLineErrors(click.Group):
    """click prints a bad command line as four lines (usage, hint, blank line,
    error); every other migratio error is one line on stderr, and scripts and
    log collectors read one line per error. So is this: the usage line is what
    ``--help`` is for."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            _error(f"usage error: {exc.format_message()} (see --help)", EXIT_USAGE)
        except click.ClickException as exc:
            _error(exc.format_message(), exc.exit_code)
        except click.Abort:
            _error("aborted", 1)
        sys.exit(result if isinstance(result, int) else 0)


def _error(message: str, code: int) -> None:
    click.echo(f"migratio: {printable(one_line(message, ERROR_LINE_LIMIT))}", err=True)
    sys.exit(code)


@click.group(cls=OneLineErrors)
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help=f"daemon config (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})",
)
@click.option("--debug", is_flag=True, help="on an error, show its traceback")
@click.version_option(package_name="migratio")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """Migrate VM templates (cloud images) between cloud sites.

    Exit codes: 0 ok, 1 the operation failed, 2 a bad command line or
    configuration, 3 a dependency (the ledger, Redis) unavailable.
    """
    ctx.obj = Context(config_path, debug=debug)


def _add(command: click.Command) -> None:
    """Register a command; every command (and subcommand) also takes --config."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            sub.params.append(config_option())
    else:
        command.params.append(config_option())
    main.add_command(command)


from migratio.cli import daemon_commands, dead, doctor, inspect, migrations  # noqa: E402

for module in (migrations, inspect, daemon_commands, doctor, dead):
    for command in module.COMMANDS:
        _add(command)
