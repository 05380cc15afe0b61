"""Commands that change migrations: ``submit``, ``retry``, ``cancel``."""

from __future__ import annotations

import json

import click

from migratio.cli.context import Context, json_option, one_line_errors, pass_context


@click.command()
@click.option("--image", "image_id", required=True, help="source image id")
@click.option("--from", "source", help="source site id (default: the daemon's name)")
@click.option(
    "--to",
    "destinations",
    required=True,
    multiple=True,
    help="destination site id; repeat it to fan out (the source is read once)",
)
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
    """Queue a migration per destination and print their ids (one per line)."""
    from migratio import operations

    # Never drop an argument silently: a site named twice is refused, not merged.
    operations.check_destinations(destinations)
    source = source or ctx.settings.daemon.name
    for destination in destinations:
        operations.check_sites(ctx.settings, source, destination)
    if via_redis:
        jids = [
            operations.submit_via_redis(ctx.settings, image_id, source, destination, base)
            for destination in destinations
        ]
        if as_json:
            click.echo(json.dumps({"jid": jids[0]} if len(jids) == 1 else {"jids": jids}))
        else:
            click.echo("\n".join(jids))
        return
    migrations = operations.submit_group(
        ctx.settings, ctx.ledger(), image_id, source, destinations, base
    )
    if not as_json:
        click.echo("\n".join(migration.id for migration in migrations))
    elif len(migrations) == 1:
        click.echo(json.dumps({"id": migrations[0].id, "state": migrations[0].state}))
    else:
        click.echo(
            json.dumps(
                {
                    "group": migrations[0].group_id,
                    "migrations": [
                        {"id": m.id, "state": m.state, "dest_site": m.dest_site} for m in migrations
                    ],
                }
            )
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
