"""Sidekiq's wire format in Redis: key names, job payloads and pushing them.

What the Ruby side writes and reads (Sidekiq 6 with redis-namespace): a queue
is the list ``<namespace>:queue:<name>`` that clients LPUSH a JSON job onto,
and every push also adds the queue's name to the set ``<namespace>:queues``.
A job's fields come in the order Sidekiq's client writes them; consumers must
tolerate extra fields.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ledger's types use Job; read-only commands need no Redis client
    import redis


def key(namespace: str, name: str) -> str:
    """A key under the namespace (redis-namespace's plain ``<ns>:`` prefix; none if empty)."""
    return f"{namespace}:{name}" if namespace else name


def queue_key(namespace: str, queue: str) -> str:
    return key(namespace, f"queue:{queue}")


def new_jid() -> str:
    """A job id as Sidekiq makes them: 24 hex characters."""
    return secrets.token_hex(12)


@dataclass(frozen=True)
class Job:
    """A Sidekiq job before it is pushed; ``enqueued_at`` is set by ``push``.

    ``retry`` false: a retried status update would arrive after later ones, and
    Atmosphere declares ``retry: false`` for its feedback worker anyway.
    """

    queue: str
    worker_class: str
    args: Sequence[Any]
    jid: str
    created_at: float
    retry: bool = False

    def payload(self, enqueued_at: float) -> str:
        """The JSON Sidekiq's client would write, fields in its order, UTF-8 unescaped."""
        fields = {
            "retry": self.retry,
            "queue": self.queue,
            "class": self.worker_class,
            "args": list(self.args),
            "jid": self.jid,
            "created_at": self.created_at,
            "enqueued_at": enqueued_at,
        }
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def push(client: redis.Redis, namespace: str, jobs: Sequence[Job]) -> None:
    """Push jobs in order, all or none (MULTI/EXEC), as ``Sidekiq::Client.push`` does."""
    now = time.time()
    push_payloads(client, namespace, [(job.queue, job.payload(now)) for job in jobs])


def push_payloads(
    client: redis.Redis, namespace: str, payloads: Sequence[tuple[str, str | bytes]]
) -> None:
    """Push ready-made payloads onto their queues, in order, all or none, and name
    each queue in ``<namespace>:queues`` as Sidekiq's client does."""
    if not payloads:
        return
    pipe = client.pipeline(transaction=True)
    for queue in dict.fromkeys(queue for queue, _ in payloads):
        pipe.sadd(key(namespace, "queues"), queue)
    for queue, payload in payloads:
        pipe.lpush(queue_key(namespace, queue), payload)
    pipe.execute()
