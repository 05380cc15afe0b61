"""Dead jobs: ``dead list``, ``dead replay``, ``dead purge`` (``migratio.intake.dead_set``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import click

from migratio.cli.context import Context, json_option, one_line_errors, pass_context
from migratio.errors import MigratioError, UsageError
from migratio.text import printable

if TYPE_CHECKING:
    from migratio.intake.dead_set import DeadJobs

T = TypeVar("T")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@click.group()
def dead() -> None:
    """Jobs the intake could not take (also in Sidekiq's Dead set)."""


@dead.command("list")
@json_option
@pass_context
@one_line_errors
def list_dead(ctx: Context, as_json: bool) -> None:
    """Dead jobs, newest first: id, age, whether Sidekiq's Dead set still shows it, reason."""
    with _dead_jobs(ctx) as jobs:
        letters = _redis(ctx, jobs.letters)
    now = time.time()
    if as_json:
        click.echo(json.dumps([letter.summary(now) for letter in letters], indent=2))
        return
    click.echo(f"{'ID':12}  {'AGE':>6}  {'SIDEKIQ':8}  {'JID':24}  REASON")
    for letter in letters:
        sidekiq = "dead" if letter.in_sidekiq else ("gone" if letter.retryable else "-")
        age = _age(now - letter.at)
        line = f"{letter.id:12}  {age:>6}  {sidekiq:8}  {letter.jid or '-':24}  {letter.reason}"
        click.echo(printable(line))


@dead.command("replay")
@click.argument("dead_id")
@json_option
@pass_context
@one_line_errors
def replay(ctx: Context, dead_id: str, as_json: bool) -> None:
    """Push a dead job back on its queue (as Sidekiq's Retry does); prints its jid."""
    with _dead_jobs(ctx) as jobs:
        try:
            jid = _redis(ctx, lambda: jobs.replay(dead_id))
        except (LookupError, ValueError) as exc:
            raise MigratioError(str(exc)) from None
    click.echo(json.dumps({"jid": jid}) if as_json else printable(jid))


@dead.command("purge")
@click.option("--older-than", metavar="AGE", help="only those older than AGE: 90s, 30m, 12h, 7d")
@json_option
@pass_context
@one_line_errors
def purge(ctx: Context, older_than: str | None, as_json: bool) -> None:
    """Forget dead jobs, here and in Sidekiq's Dead set (Sidekiq's own stay)."""
    age = parse_age(older_than) if older_than else None
    with _dead_jobs(ctx) as jobs:
        count = _redis(ctx, lambda: jobs.purge(age))
    click.echo(json.dumps({"purged": count}) if as_json else f"{count} dead jobs purged")


def parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match is None:
        raise UsageError(f"--older-than: {text!r} is not an age like 90s, 30m, 12h, 7d or 2w")
    return timedelta(seconds=int(match[1]) * UNITS[match[2]])


@contextmanager
def _dead_jobs(ctx: Context) -> Iterator[DeadJobs]:
    import redis

    from migratio.intake.dead_set import DeadJobs

    daemon = ctx.settings.daemon
    client = redis.Redis.from_url(daemon.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        yield DeadJobs(client, daemon.namespace, daemon.dead_letters_max)
    finally:
        client.close()


def _redis(ctx: Context, call: Callable[[], T]) -> T:
    import redis

    from migratio.redis_link import redacted

    try:
        return call()
    except redis.RedisError as exc:
        where = redacted(ctx.settings.daemon.redis_url)
        raise MigratioError(f"redis at {where}: {exc}") from None


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


COMMANDS = [dead]
