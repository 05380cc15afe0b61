"""A Redis list consumed so that no job is lost when a consumer dies.

A job leaves the queue only by an atomic move (``BLMOVE``/``LMOVE`` RIGHT → LEFT,
so FIFO against the clients' LPUSH) into the consumer's own processing list,
and leaves that list only when the consumer acknowledges it (``LREM``), which
it does after the ledger has the job. Each consumer keeps a heartbeat key
alive; the processing list of a consumer without a heartbeat belongs to a dead
consumer, and its jobs go back to the queue, oldest at the consuming end.

Keys (``<ns>:`` is the namespace prefix):

* ``<ns>:queue:<queue>`` — the queue (Sidekiq's list);
* ``<ns>:migratio:processing:<queue>:<consumer>`` — jobs a consumer holds;
* ``<ns>:migratio:heartbeat:<consumer>`` — exists while that consumer lives;
* ``<ns>:migratio:dead`` and ``<ns>:dead`` — dead jobs (``dead_set``).

The processing lists are deliberately not in ``<ns>:queues``: Sidekiq would
show them as queues and its own workers could take from them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import redis

from migratio import sidekiq
from migratio.intake.dead_set import DeadJob, DeadJobs


class ReliableQueue:
    """One consumer's view of one queue.

    ``heartbeat_seconds`` is the heartbeat key's lifetime: the consumer must beat
    more often than that, and its jobs are handed to others that long after it died.
    ``dead_letters_max`` bounds migratio's dead-letter list: the oldest letters go first.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        queue: str,
        consumer: str,
        heartbeat_seconds: float,
        dead_letters_max: int = 10_000,
    ) -> None:
        self.client = client
        self.queue = queue
        self.dead = DeadJobs(client, namespace, dead_letters_max)
        self.consumer = consumer
        self.heartbeat_seconds = heartbeat_seconds
        self.queue_key = sidekiq.queue_key(namespace, queue)
        self.dead_key = self.dead.list_key
        self._processing_prefix = sidekiq.key(namespace, f"migratio:processing:{queue}:")
        self._heartbeat_prefix = sidekiq.key(namespace, "migratio:heartbeat:")
        self.processing_key = self._processing_prefix + consumer
        self.heartbeat_key = self._heartbeat_prefix + consumer

    def take(self, limit: int, wait_seconds: float) -> list[bytes]:
        """Move up to ``limit`` jobs, oldest first, into our processing list.

        Waits up to ``wait_seconds`` for a first job when the queue is empty.
        """
        jobs = self._take_now(limit)
        if jobs or wait_seconds <= 0:
            return jobs
        # Redis takes fractions of a second here, redis-py's annotation only int.
        first = self.client.blmove(
            self.queue_key,
            self.processing_key,
            wait_seconds,  # type: ignore[arg-type]
            "RIGHT",
            "LEFT",
        )
        if not isinstance(first, bytes):
            return []
        return [first, *self._take_now(limit - 1)]

    def ack(self, jobs: Sequence[bytes], dead: Sequence[DeadJob] = ()) -> None:
        """Drop handled jobs from our processing list; dead ones are written in the same MULTI."""
        pipe = self.client.pipeline(transaction=True)
        self.dead.add(pipe, dead)
        for job in jobs:
            # The job's exact bytes (which need not be UTF-8) name the entry to remove;
            # redis-py takes bytes although its annotation says str.
            pipe.lrem(self.processing_key, 1, job)  # type: ignore[arg-type]
        pipe.execute()

    def beat(self) -> None:
        """Say we are alive for another ``heartbeat_seconds``."""
        self.client.set(
            self.heartbeat_key, self.consumer, px=max(1, int(self.heartbeat_seconds * 1000))
        )

    def recover(self) -> int:
        """Return the jobs of consumers without a heartbeat to the queue; how many moved."""
        moved = 0
        pattern = _glob_escape(self._processing_prefix) + "*"
        for raw_key in self.client.scan_iter(match=pattern, count=200):
            key = raw_key.decode()
            consumer = key[len(self._processing_prefix) :]
            if consumer == self.consumer or self.client.exists(self._heartbeat_prefix + consumer):
                continue
            moved += self._return(key)
        return moved

    def return_own(self) -> int:
        """Put every job we hold back on the queue (we cannot tell what we took)."""
        return self._return(self.processing_key)

    def retire(self) -> int:
        """A clean stop: give back what we hold and stop beating."""
        returned = self.return_own()
        self.client.delete(self.heartbeat_key)
        return returned

    def _take_now(self, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        for _ in range(limit):
            pipe.lmove(self.queue_key, self.processing_key, "RIGHT", "LEFT")
        return [job for job in pipe.execute() if job is not None]

    def _return(self, processing_key: str) -> int:
        # Newest first onto the consuming end, so the oldest ends up next in line;
        # each move is atomic, so two consumers returning the same list move each job once.
        moved = 0
        while self.client.lmove(processing_key, self.queue_key, "LEFT", "RIGHT") is not None:
            moved += 1
        return moved


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
