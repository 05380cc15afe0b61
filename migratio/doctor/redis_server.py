"""Redis, when intake or feedback uses it: it answers, and which server it is.
The URL is shown without its password, and any error text is scrubbed of it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from migratio.doctor.result import Check, Verdict, fail, ok, scrubbed
from migratio.text import error_text

if TYPE_CHECKING:
    from migratio.config import DaemonConfig
    from migratio.doctor.runner import Chain


def chain(daemon: DaemonConfig, timeout: float) -> Chain:
    from migratio.doctor.runner import Chain

    return Chain("redis", [Check("redis", lambda: answers(daemon, timeout))])


def answers(daemon: DaemonConfig, timeout: float) -> Verdict:
    import redis

    from migratio.redis_link import redacted

    users = [name for name, on in (("intake", daemon.intake), ("feedback", daemon.feedback)) if on]
    if not users:
        return ok("not used (intake and feedback are off)")
    where = redacted(daemon.redis_url)
    client = redis.Redis.from_url(
        daemon.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except (redis.RedisError, OSError) as exc:
        text = scrubbed(error_text(exc), [urlsplit(daemon.redis_url).password])
        return fail(f"{where} (for {' and '.join(users)}): {text}")
    finally:
        client.close()
    return ok(f"{where} answers (Redis {version}), for {' and '.join(users)}")
