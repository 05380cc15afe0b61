"""Commands that change migrations: ``submit``, ``retry``, ``cancel``."""

from __future__ import annotations

import click

from migratio.cli.context import Context, one_line_errors, pass_context


@click.command()
@click.option("--image", "image_id", required=True, help="source image id")
@click.option("--from", "source", help="source site id (default: the daemon's name)")
@click.option("--to", "destination", required=True, help="destination site id")
@click.option(
    "--via-redis",
    is_flag=True,
    help="push a job onto the source site's Redis queue instead; prints the job id",
)
@pass_context
@one_line_errors
def submit(
    ctx: Context, image_id: str, source: str | None, destination: str, via_redis: bool
) -> None:
    """Queue a migration and print its id."""
    from migratio import operations

    source = source or ctx.settings.daemon.name
    operations.check_sites(ctx.settings, source, destination)
    if via_redis:
        click.echo(operations.submit_via_redis(ctx.settings, image_id, source, destination))
        return
    migration = operations.submit(ctx.settings, ctx.ledger(), image_id, source, destination)
    click.echo(migration.id)


@click.command()
@click.argument("migration_id")
@pass_context
@one_line_errors
def retry(ctx: Context, migration_id: str) -> None:
    """Queue a failed or cancelled migration again."""
    from migratio import operations

    migration = operations.retry(ctx.ledger(), migration_id)
    click.echo(f"{migration.id} {migration.state}")


@click.command()
@click.argument("migration_id")
@pass_context
@one_line_errors
def cancel(ctx: Context, migration_id: str) -> None:
    """Cancel a migration and remove what it created."""
    from migratio import operations

    migration, ended = operations.cancel(ctx.settings, ctx.ledger(), migration_id)
    if ended:
        click.echo(f"{migration.id} {migration.state}")
    else:
        click.echo(
            f"{migration.id} cancel requested; {migration.lease_owner} stops it "
            "at its next checkpoint"
        )


COMMANDS = [submit, retry, cancel]
