"""What operators do, as plain functions: the CLI prints their results, tests call them."""

from __future__ import annotations

import os
from collections.abc import Sequence

from migratio import config, sidekiq
from migratio.errors import IllegalTransition, RedisUnavailable, UsageError
from migratio.feedback.outbox import status_job
from migratio.intake.jobs import MAX_IMAGE_ID, BadJob, native_job, parse
from migratio.ledger.store import Ledger, Migration
from migratio.machine import TERMINAL, Trigger
from migratio.text import ascii_line, is_printable


def open_ledger(settings: config.Settings, *, migrate: bool = True) -> Ledger:
    """The ledger the config names, its schema brought up to date (``migrate``),
    else as it is: it must exist, at the newest schema (read-only commands).

    With feedback on, every change queues its status message in the ledger's outbox.
    """
    on_change = status_job if settings.daemon.feedback else None
    return Ledger.open(settings.daemon.ledger_url, migrate=migrate, on_change=on_change)


def submit(
    settings: config.Settings,
    ledger: Ledger,
    image_id: str,
    source: str,
    destination: str,
    base: str | None = None,
) -> Migration:
    """Queue a migration; both sites must be configured, and the image ids must be
    ones the intake would take from a job (short, printable). ``base`` names the
    image's previous version (an incremental upload starts from it)."""
    return submit_group(settings, ledger, image_id, source, (destination,), base)[0]


def submit_group(
    settings: config.Settings,
    ledger: Ledger,
    image_id: str,
    source: str,
    destinations: Sequence[str],
    base: str | None = None,
) -> list[Migration]:
    """Queue one migration per destination, in one transaction; several form a
    group that reads the source once. A destination named twice is refused."""
    check_destinations(destinations)
    check_image_id(image_id, "image id")
    if base is not None:
        check_image_id(base, "--base")
    for destination in destinations:
        check_sites(settings, source, destination)
    message = f"submitted by pid {os.getpid()}" + (f"; base version {base}" if base else "")
    return ledger.create_group(source, destinations, image_id, message=message, base_image_id=base)


def check_destinations(destinations: Sequence[str]) -> None:
    """UsageError for no destination or one named twice: never drop an argument silently."""
    if not destinations:
        raise UsageError("--to: at least one destination site")
    twice = sorted({site for site in destinations if destinations.count(site) > 1})
    if twice:
        raise UsageError(f"--to: {', '.join(map(repr, twice))} given more than once")


def check_image_id(image_id: str, what: str) -> None:
    """UsageError unless the id is one the intake would take from a job."""
    if not image_id.strip():
        raise UsageError(f"{what} must not be empty")
    if len(image_id) > MAX_IMAGE_ID:
        raise UsageError(f"{what} is longer than {MAX_IMAGE_ID} characters")
    if not is_printable(image_id):
        shown = ascii_line(image_id, 80)
        raise UsageError(f"{what} holds control or invalid characters: {shown}")


def check_sites(settings: config.Settings, source: str, destination: str) -> None:
    """UsageError unless both sites are configured and differ."""
    for option, site in (("--from", source), ("--to", destination)):
        if site not in settings.sites:
            known = ", ".join(sorted(settings.sites)) or "none"
            raise UsageError(f"{option}: unknown site {site!r} (known: {known})")
    if source not in settings.source_sites:
        kind = settings.sites[source].settings.type
        raise UsageError(f"--from: {source!r} is an {kind} site: images migrate to it, not from it")
    if source == destination:
        raise UsageError("source and destination are the same site")


def submit_via_redis(
    settings: config.Settings,
    image_id: str,
    source: str,
    destination: str,
    base: str | None = None,
) -> str:
    """Push a native job onto the source site's intake queue; return its job id.

    The job is checked as the daemon will check it, so a bad one is refused here.
    """
    daemon = settings.daemon
    queue = f"migration_{source}"
    check_sites(settings, source, destination)
    jid = sidekiq.new_jid()
    job = native_job(image_id, destination, source, jid, base)
    try:
        parse(
            job,
            own_site=source,
            sites=settings.sites,
            sources=settings.source_sites,
            origin="submit",
        )
    except BadJob as exc:
        raise UsageError(exc.reason) from None
    import redis  # only this command talks to Redis

    from migratio.redis_link import redacted

    client = redis.Redis.from_url(
        daemon.redis_url,
        socket_connect_timeout=daemon.redis_connect_timeout,
        socket_timeout=daemon.redis_timeout,
    )
    try:
        sidekiq.push_payloads(client, daemon.namespace, [(queue, job)])
    except redis.RedisError as exc:
        where = redacted(daemon.redis_url)
        raise RedisUnavailable(f"cannot push to redis at {where}: {exc}") from None
    finally:
        client.close()
    return jid


def retry(ledger: Ledger, migration_id: str) -> Migration:
    migration = ledger.find(migration_id)
    if migration.state not in ("failed", "cancelled"):
        raise IllegalTransition(
            f"migration {migration.id} is {migration.state}; only failed "
            "or cancelled migrations can be retried"
        )
    return ledger.transition(migration.id, None, Trigger.REQUEUE, "retried by operator")


def cancel(settings: config.Settings, ledger: Ledger, migration_id: str) -> tuple[Migration, bool]:
    """Cancel now if no daemon holds the migration, else ask its daemon to.

    Returns the migration and whether the cancel already took effect.
    """
    migration = ledger.find(migration_id)
    if migration.state in TERMINAL:
        raise IllegalTransition(f"migration {migration.id} is already {migration.state}")
    ledger.request_cancel(migration.id)
    from migratio.supervisor import Supervisor  # drivers and SDKs: only when cancelling

    ended = Supervisor(settings, ledger).end_now(
        migration.id, Trigger.CANCEL, "cancelled by operator"
    )
    return ledger.get(migration.id), ended
