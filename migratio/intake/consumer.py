"""The intake of ``migratio run``: jobs from this site's Redis queue become ledger migrations.

One round: move up to ``intake_batch`` jobs into our processing list, read
them, record the good ones in one ledger transaction, then acknowledge all of
them (bad ones go to the dead jobs, ``dead_set``, in the same Redis transaction). A
crash anywhere leaves the jobs in the processing list, from where they return
to the queue; the ledger knows every job id it recorded, so none is recorded
twice. A job that cannot be a migration never stops the consumer.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC
from functools import partial

from migratio import config, faults, metrics
from migratio.errors import JobConflict, LedgerError, LedgerUnavailable
from migratio.feedback.outbox import Outbox
from migratio.intake.dead_set import DeadJob, dead_job
from migratio.intake.jobs import BadJob, parse
from migratio.intake.process_set import SidekiqProcess, Work
from migratio.intake.reliable_queue import ReliableQueue
from migratio.ledger.store import JobOutcome, JobRecorded, JobRequest, Ledger
from migratio.machine import ACTIVE
from migratio.polling import Backoff, poll
from migratio.redis_link import UNAVAILABLE, RedisLink
from migratio.text import ascii_line

log = logging.getLogger(__name__)

# Longest wait for a job in one BLMOVE; bounds how long a stop takes (a stop
# waits for the BLMOVE under way: at 0.5 s, ``run --until-idle`` and a SIGTERM
# took ~0.5 s longer than needed). An idle consumer asks Redis 10 times a second,
# which costs Redis microseconds.
WAIT_SECONDS = 0.1
# Waiting for an unreachable ledger: soon after a blip, every 10 s in an outage.
# A fault of our own that repeats: 1 s, doubling, at most a minute.
FAULT_BACKOFF = Backoff(first=1.0, factor=2.0, longest=60.0)
LEDGER_BACKOFF = Backoff(first=0.5, factor=2.0, longest=10.0)
# Times a batch is recorded again after another consumer recorded one of its job ids.
CONFLICT_ATTEMPTS = 3


class Stopping(Exception):
    """The daemon is stopping while a round waits for the ledger."""


class Consumer:
    """Takes jobs from ``<namespace>:queue:migration_<name>`` into the ledger.

    ``consumer_id`` names this process in Redis (the supervisor's lease owner,
    so operators can match the two), also as a process in Sidekiq's process set.
    ``outbox`` is None when feedback is off.
    ``on_created`` is called after a round that created migrations (to wake the
    supervisor).
    """

    def __init__(
        self,
        settings: config.Settings,
        ledger: Ledger,
        link: RedisLink,
        consumer_id: str,
        *,
        outbox: Outbox | None = None,
        on_created: Callable[[], None] = lambda: None,
    ) -> None:
        daemon = settings.daemon
        self.settings = settings
        self.ledger = ledger
        self.link = link
        self.outbox = outbox
        self.on_created = on_created
        self.batch = daemon.intake_batch
        self.queue = ReliableQueue(
            link.client,
            namespace=daemon.namespace,
            queue=f"migration_{daemon.name}",
            consumer=consumer_id,
            heartbeat_seconds=daemon.intake_heartbeat_seconds,
            dead_letters_max=daemon.dead_letters_max,
        )
        self.process = SidekiqProcess(
            link.client,
            namespace=daemon.namespace,
            identity=consumer_id,
            queue=self.queue.queue,
            concurrency=daemon.concurrency if daemon.migrate else 0,
            labels=() if daemon.migrate else ("intake only",),
            beat_seconds=daemon.intake_heartbeat_seconds / 3,
        )
        self._work: list[Work] = []
        self._stopping = threading.Event()
        self._quiet = threading.Event()
        self._idle = False
        self._unsure = False
        self._threads = [
            threading.Thread(target=self._run, name="intake", daemon=True),
            threading.Thread(target=self._keep_alive, name="intake-heartbeat", daemon=True),
        ]

    @property
    def idle(self) -> bool:
        """True once the queue was found empty (or Redis unreachable) with nothing held."""
        return self._idle

    def start(self) -> None:
        """Beat, hand back dead consumers' jobs, then start consuming."""
        log.info("intake: consuming %s as %s", self.queue.queue_key, self.queue.consumer)
        try:
            self._beat_and_recover()
        except UNAVAILABLE as exc:
            self.link.failed(exc)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    # ---- the consuming thread --------------------------------------------------

    def _run(self) -> None:
        # A fault that repeats costs one line per period, never a hot loop.
        delays = FAULT_BACKOFF.delays()
        while not (self._stopping.is_set() or self._quiet.is_set()):
            try:
                self._round()
            except Stopping:
                break
            except UNAVAILABLE as exc:
                # A move may have happened without our seeing its reply.
                self._unsure = True
                self._idle = True
                self._stopping.wait(self.link.failed(exc))
            except Exception:
                # Each job is judged alone (a bad one is dead-lettered), so this
                # is a fault of our own or of the ledger.
                delay = next(delays)
                log.exception("intake: unexpected error; retrying in %.0f s", delay)
                # What we hold goes back to the queue; the ledger knows what it took.
                self._unsure = True
                self._stopping.wait(delay)
            else:
                delays = FAULT_BACKOFF.delays()
        self._retire()

    def _round(self) -> None:
        if self._unsure:
            if returned := self.queue.return_own():
                log.info("intake: put %d unacknowledged jobs back on the queue", returned)
            self._unsure = False
        jobs = self.queue.take(self.batch, 0)
        self.link.succeeded()
        if not jobs:
            self._idle = True
            jobs = self.queue.take(self.batch, WAIT_SECONDS)
            if not jobs:
                return
        self._idle = False
        faults.point("intake.after_move", stopping=self._stopping)
        self._handle(jobs)

    def _handle(self, raws: Sequence[bytes]) -> None:
        good: list[tuple[bytes, JobRequest]] = []
        bad: list[tuple[bytes, BadJob]] = []
        for raw in raws:
            try:
                good.append((raw, self._parse(raw)))
            except BadJob as exc:
                bad.append((raw, exc))
        recorded, refused = self._record([job for _, job in good])
        bad += [(raw, BadJob(refused[job.job_id])) for raw, job in good if job.job_id in refused]
        for _, problem in bad:
            self._report(problem)
        now = time.time()
        dead = [
            # Apart by a microsecond: Sidekiq's Retry finds an entry by its score.
            dead_job(raw, problem.reason, self.queue.queue_key, self.queue.queue, now + n * 1e-6)
            for n, (raw, problem) in enumerate(bad)
        ]
        self._ack(raws, dead)
        for result in recorded:
            log.info(
                "intake: job %s: %s %s -> %s: %s migration %s",
                result.job.job_id,
                result.job.image_id,
                result.job.source_site,
                result.job.dest_site,
                result.outcome.value,
                result.migration_id,
            )
        for _, problem in bad:
            log.warning("intake: job dead-lettered to %s: %s", self.queue.dead_key, problem.reason)
        metrics.intake_jobs(recorded, dead=len(bad))
        if any(result.outcome is JobOutcome.CREATED for result in recorded):
            self.on_created()

    def _parse(self, raw: bytes) -> JobRequest:
        return parse(
            raw,
            own_site=self.settings.daemon.name,
            sites=self.settings.sites,
            sources=self.settings.source_sites,
            origin=self.queue.queue_key,
        )

    def _record(self, jobs: list[JobRequest]) -> tuple[list[JobRecorded], dict[str, str]]:
        """Record jobs in the ledger: what it took, and why it refused any (by job id).

        Waits out a ledger that is unreachable (the jobs stay ours meanwhile).
        """
        if not jobs:
            return [], {}
        accept = partial(
            self.ledger.accept_jobs, coalesce_seconds=self.settings.daemon.coalesce_seconds
        )
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._ledger_call(partial(accept, jobs)), {}
            except JobConflict:
                # Another consumer recorded one of these job ids at the same moment:
                # try again, and the ledger finds it.
                log.info("intake: job id recorded concurrently (attempt %d); retrying", attempt)
            except Stopping:
                raise
            except Exception:
                break
        # Something in the batch the ledger will not take: find it, keep the rest.
        recorded: list[JobRecorded] = []
        refused: dict[str, str] = {}
        for job in jobs:
            try:
                recorded += self._ledger_call(partial(accept, [job]))
            except Stopping:
                raise
            except Exception as exc:
                why = exc.reason if isinstance(exc, LedgerError) else exc
                refused[job.job_id] = f"the ledger refused it: {ascii_line(why)}"
        return recorded, refused

    def _ledger_call(self, call: Callable[[], list[JobRecorded]]) -> list[JobRecorded]:
        """What ``call`` returns once the ledger answers; ``Stopping`` if we stop first."""
        reason = ""

        def answer() -> list[JobRecorded] | None:
            nonlocal reason
            try:
                return call()
            except LedgerUnavailable as exc:
                reason = exc.reason
                return None

        def wait(delay: float) -> None:
            log.warning("intake: ledger unavailable (%s); retrying in %.1f s", reason, delay)
            if self._stopping.wait(delay):
                raise Stopping

        recorded = poll(answer, LEDGER_BACKOFF, wait=wait)
        assert recorded is not None  # no timeout: poll returns only with an answer
        return recorded

    def _report(self, problem: BadJob) -> None:
        if self.outbox is None or problem.image_id is None or problem.dest_site is None:
            return
        try:
            self.outbox.report_failure(
                problem.image_id, self.settings.daemon.name, problem.dest_site, problem.reason
            )
        except Exception as exc:
            log.warning("intake: cannot queue failure feedback: %s", ascii_line(exc))

    def _ack(self, raws: Sequence[bytes], dead: Sequence[DeadJob]) -> None:
        """Acknowledge, however long Redis takes to come back: the ledger already has them."""
        while True:
            try:
                self.queue.ack(raws, dead)
                self.link.succeeded()
                return
            except UNAVAILABLE as exc:
                if self._stopping.wait(self.link.failed(exc)):
                    # Still in our processing list: they come back to the queue after
                    # our heartbeat expires, and the ledger knows their job ids.
                    raise Stopping from None

    def _retire(self) -> None:
        try:
            returned = self.queue.retire()
        except UNAVAILABLE as exc:
            log.warning("intake: cannot hand back held jobs on stop (%s)", ascii_line(exc))
            return
        if returned:
            log.info("intake: put %d jobs back on the queue on stop", returned)

    # ---- the heartbeat thread --------------------------------------------------

    def _keep_alive(self) -> None:
        """Beat three times per heartbeat lifetime; hand back dead consumers' jobs once per."""
        lifetime = self.queue.heartbeat_seconds
        next_recovery = time.monotonic() + lifetime
        while not self._stopping.wait(lifetime / 3):
            try:
                if time.monotonic() < next_recovery:
                    self.queue.beat()
                    self._beat_process()
                    continue
                next_recovery = time.monotonic() + lifetime
                self._beat_and_recover()
            except UNAVAILABLE:
                pass  # the consuming thread reports the outage
        try:
            self.process.clear()
        except UNAVAILABLE as exc:
            log.warning("intake: cannot leave Sidekiq's process set (%s)", ascii_line(exc))

    def _beat_and_recover(self) -> None:
        self.queue.beat()
        self._beat_process()
        if moved := self.queue.recover():
            log.warning(
                "intake: %d jobs of consumers without heartbeat back on %s",
                moved,
                self.queue.queue_key,
            )

    # ---- Sidekiq's process set ----------------------------------------------------

    def _beat_process(self) -> None:
        if signal_name := self.process.beat(self._running()):
            self._on_signal(signal_name)

    def _running(self) -> list[Work]:
        """The migrations this process runs (by lease); the last answer if the ledger is away."""
        if not self.settings.daemon.migrate:
            return []
        try:
            migrations = self.ledger.migrations(ACTIVE)
        except LedgerError:
            return self._work
        owner = self.queue.consumer
        self._work = [
            Work(
                migration_id=m.id,
                job_id=m.job_id,
                image_id=m.image_id,
                source_site=m.source_site,
                dest_site=m.dest_site,
                state=m.state,
                # The ledger's times are naive UTC.
                started_at=m.created_at.replace(tzinfo=UTC).timestamp(),
            )
            for m in migrations
            if m.lease_owner == owner
        ]
        return self._work

    def _on_signal(self, name: str) -> None:
        """Sidekiq Web's buttons: Quiet (TSTP) stops taking jobs, Stop (TERM) stops the
        daemon as SIGTERM would; TTIN logs every thread's stack, as Sidekiq does."""
        log.info("intake: signal %s from Sidekiq's process set", ascii_line(name))
        if name == "TERM":
            os.kill(os.getpid(), signal.SIGTERM)
        elif name == "TSTP":
            self.process.quiet = True
            self._quiet.set()
        elif name == "TTIN":
            for thread_id, frame in sys._current_frames().items():
                stack = "".join(traceback.format_stack(frame))
                log.warning("intake: thread %s:\n%s", thread_id, stack)
        else:
            log.warning("intake: signal %s ignored", ascii_line(name))
