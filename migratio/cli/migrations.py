"""Commands that change migrations: ``submit``, ``retry``, ``cancel``."""

from __future__ import annotations

import json

import click

from migratio.cli.context import Context, json_option, one_line_errors, pass_context
from migratio.errors import UsageError


@click.command()
@click.option("--image", "image_id", required=True, help="source image id")
@click.option("--from", "source", help="source site id (default: the daemon's name)")
@click.option("--to", "destinations", required=True, multiple=True, help="destination site id")
@click.option(
    "--base",
    "base",
    metavar="IMAGE_ID",
    help="the image's previous version (a source image id); default: its base_image_ref",
)
@click.option(
    "--via-redis",
    is_flag=True,
    help="push a job onto the source site's Redis queue instead; prints the job id",
)
@json_option
@pass_context
@one_line_errors
def submit(
    ctx: Context,
    image_id: str,
    source: str | None,
    destinations: tuple[str, ...],
    base: str | None,
    via_redis: bool,
    as_json: bool,
) -> None:
    """Queue a migration and print its id."""
    from migratio import operations

    if len(destinations) > 1:
        # Never drop an argument silently (click would keep only the last).
        raise UsageError(f"--to given {len(destinations)} times: one destination per migration")
    destination = destinations[0]
    source = source or ctx.settings.daemon.name
    operations.check_sites(ctx.settings, source, destination)
    if via_redis:
        jid = operations.submit_via_redis(ctx.settings, image_id, source, destination, base)
        click.echo(json.dumps({"jid": jid}) if as_json else jid)
        return
    migration = operations.submit(ctx.settings, ctx.ledger(), image_id, source, destination, base)
    click.echo(
        json.dumps({"id": migration.id, "state": migration.state}) if as_json else migration.id
    )


@click.command()
@click.argument("migration_id")
@json_option
@pass_context
@one_line_errors
def retry(ctx: Context, migration_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled migration again."""
    from migratio import operations

    migration = operations.retry(ctx.ledger(), migration_id)
    if as_json:
        click.echo(json.dumps({"id": migration.id, "state": migration.state}))
    else:
        click.echo(f"{migration.id} {migration.state}")


@click.command()
@click.argument("migration_id")
@json_option
@pass_context
@one_line_errors
def cancel(ctx: Context, migration_id: str, as_json: bool) -> None:
    """Cancel a migration and remove what it created."""
    from migratio import operations

    migration, ended = operations.cancel(ctx.settings, ctx.ledger(), migration_id)
    if as_json:
        state = migration.state if ended else "cancel requested"
        click.echo(
            json.dumps({"id": migration.id, "state": state, "held_by": migration.lease_owner})
        )
    elif ended:
        click.echo(f"{migration.id} {migration.state}")
    else:
        click.echo(
            f"{migration.id} cancel requested; {migration.lease_owner} stops it "
            "at its next checkpoint"
        )


COMMANDS = [submit, retry, cancel]
