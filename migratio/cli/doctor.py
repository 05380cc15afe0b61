"""``migratio doctor``: is this host ready to migrate? One line per check."""

from __future__ import annotations

import json
import sys

import click

from migratio.cli.context import Context, pass_context
from migratio.text import printable


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="how long each check may take",
)
@click.option(
    "--min-free-gib",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="warn when the work dir has less free space",
)
@pass_context
def doctor(ctx: Context, as_json: bool, timeout: float, min_free_gib: float) -> None:
    """Check the config, every site, the ledger, Redis, the work dir and qemu-img.

    Exits 0 when no check failed (warnings pass), 1 otherwise.
    """
    import logging

    from migratio.doctor.result import passed
    from migratio.doctor.runner import GIB, Options, diagnose

    # Libraries' own warnings (paramiko's tracebacks, openstacksdk's skipped
    # files) would interleave with the report: each verdict says what went wrong.
    logging.getLogger().addHandler(logging.NullHandler())
    results = diagnose(ctx.path, Options(timeout=timeout, min_free=int(min_free_gib * GIB)))
    if as_json:
        click.echo(json.dumps([item.as_dict() for item in results], indent=2, ensure_ascii=False))
    else:
        for item in results:
            click.echo(printable(item.line()))
        counts = {status: 0 for status in ("ok", "warn", "fail")}
        for item in results:
            counts[item.status.value] += 1
        click.echo(", ".join(f"{count} {status}" for status, count in counts.items()))
    sys.exit(0 if passed(results) else 1)


COMMANDS = [doctor]
