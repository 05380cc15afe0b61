"""This daemon as a process in Sidekiq's process set, so Sidekiq Web's Busy tab and
``Sidekiq::ProcessSet`` list it next to Atmosphere's own Sidekiq processes.

The keys are those Sidekiq 6's launcher writes for itself (``launcher.rb``,
``❤``), each beat in one MULTI:

* ``<ns>:processes`` — the set of process identities (``host:pid:nonce``);
* ``<ns>:<identity>`` — a hash: ``info`` (JSON: hostname, started_at, pid, tag,
  concurrency, queues, labels, identity), ``busy`` (migrations running here),
  ``beat`` (epoch seconds), ``quiet`` (``"true"``/``"false"``), ``rss`` (KiB)
  and ``rtt_us``; it expires unless beaten again, and ``ProcessSet`` drops an
  identity whose hash has no ``info``;
* ``<ns>:<identity>:workers`` — a hash of the work in progress, one field per
  running migration: ``{"queue", "payload" (a job's JSON), "run_at"}``.

A clean stop removes the identity and the work hash, as Sidekiq's does.
Sidekiq Web's Quiet and Stop buttons push ``TSTP`` or ``TERM`` onto
``<ns>:<identity>-signals``; each beat takes one and hands it to ``on_signal``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import redis

from migratio import sidekiq

# Sidekiq's own lifetime for the process hash; a longer beat period stretches it.
LIFETIME_SECONDS = 60
TAG = "migratio"


@dataclass(frozen=True)
class Work:
    """A migration running in this process, as the Busy tab shows it."""

    migration_id: str
    job_id: str | None
    image_id: str
    source_site: str
    dest_site: str
    state: str
    started_at: float


class SidekiqProcess:
    """One identity in ``<ns>:processes``.

    ``identity`` is the lease owner name (``host:pid:nonce``, Sidekiq's own
    shape), so the Busy tab and ``migratio status`` name the same process.
    ``beat_seconds`` is how often ``beat`` is called; the hash lives at least
    Sidekiq's 60 s, and twice the period if that is longer.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        identity: str,
        queue: str,
        concurrency: int,
        labels: Sequence[str] = (),
        beat_seconds: float = 5.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.queue = queue
        self.key = sidekiq.key(namespace, identity)
        self.workers_key = f"{self.key}:workers"
        self.signals_key = f"{self.key}-signals"
        self.processes_key = sidekiq.key(namespace, "processes")
        self.lifetime = max(LIFETIME_SECONDS, int(2 * beat_seconds) + 1)
        self.quiet = False
        self.info = json.dumps(
            {
                "hostname": socket.gethostname(),
                "started_at": time.time(),
                "pid": os.getpid(),
                "tag": TAG,
                "concurrency": concurrency,
                "queues": [queue],
                "labels": [*labels, f"migratio {_version()}"],
                "identity": identity,
            },
            separators=(",", ":"),
        )

    def beat(self, work: Sequence[Work]) -> str | None:
        """Say we are alive and what we run; a signal from Sidekiq Web, if one waits."""
        started = time.monotonic()
        self.client.ping()
        rtt_us = int((time.monotonic() - started) * 1_000_000)
        pipe = self.client.pipeline(transaction=True)
        pipe.unlink(self.workers_key)
        for item in work:
            pipe.hset(self.workers_key, item.migration_id, self._work_entry(item))
        pipe.expire(self.workers_key, self.lifetime)
        pipe.sadd(self.processes_key, self.identity)
        pipe.hset(
            self.key,
            mapping={
                "info": self.info,
                "busy": len(work),
                "beat": time.time(),
                "rtt_us": rtt_us,
                "quiet": "true" if self.quiet else "false",
                "rss": _rss_kib(),
            },
        )
        pipe.expire(self.key, self.lifetime)
        pipe.rpop(self.signals_key)
        signal = pipe.execute()[-1]
        return signal.decode(errors="replace") if isinstance(signal, bytes) else None

    def clear(self) -> None:
        """A clean stop: no longer a process of the set."""
        pipe = self.client.pipeline(transaction=True)
        pipe.srem(self.processes_key, self.identity)
        pipe.unlink(self.workers_key, self.key)
        pipe.execute()

    def _work_entry(self, item: Work) -> str:
        job = {
            "retry": False,
            "queue": self.queue,
            "class": "Migratio::Migration",
            "args": [item.image_id, item.dest_site],
            "jid": item.job_id or item.migration_id,
            "migration_id": item.migration_id,
            "source_site": item.source_site,
            "state": item.state,
        }
        # Sidekiq 6 stores the payload as a JSON string inside the JSON (#4316).
        entry = {
            "queue": self.queue,
            "payload": json.dumps(job, ensure_ascii=False, separators=(",", ":")),
            "run_at": int(item.started_at),
        }
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def _rss_kib() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _version() -> str:
    try:
        return metadata.version("migratio")
    except metadata.PackageNotFoundError:
        return "dev"
