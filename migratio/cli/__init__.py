"""The ``migratio`` command: parses arguments, calls ``operations``, prints.

One module per group of commands; each imports what it needs only when it runs,
so ``migratio --help`` does not load the cloud SDKs, Redis or the supervisor.
"""

from __future__ import annotations

import click

from migratio import config
from migratio.cli.context import Context


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
    ctx.obj = Context(config_path)


from migratio.cli import daemon_commands, dead, inspect, migrations  # noqa: E402

for module in (migrations, inspect, daemon_commands, dead):
    for command in module.COMMANDS:
        main.add_command(command)
