"""The supervisor: claims due migrations under a lease, drives each through its states,
retries transient errors with backoff and stops at checkpoints on request.

A lease is renewed by a heartbeat thread; a daemon killed with SIGKILL stops
renewing, and any daemon takes its migrations over once the lease has expired,
resuming from the recorded state.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from datetime import timedelta

from migratio import config, faults, logs
from migratio.admission import WaitingForSpace, WorkDirSpace
from migratio.bandwidth import Bandwidth
from migratio.drivers.base import DestinationDriver, DestinationSite, SourceDriver
from migratio.drivers.registry import Drivers, SiteOpener
from migratio.errors import (
    CancelRequested,
    ConfigError,
    LeaseLost,
    LedgerError,
    PermanentError,
    ShuttingDown,
    TransientError,
)
from migratio.janitor import Janitor
from migratio.ledger.store import Ledger, Migration, utcnow
from migratio.machine import Trigger, is_terminal
from migratio.metrics import hooks as metrics
from migratio.retry import backoff_delay
from migratio.running import Running
from migratio.states import HANDLERS
from migratio.step import Signals, Step
from migratio.systemd import Notifier
from migratio.text import one_line
from migratio.wakeup import Wakeup

log = logging.getLogger(__name__)

# The janitor looks for leftovers due for another removal attempt every this many polls.
JANITOR_POLLS = 5


def make_owner() -> str:
    """A lease owner name that tells operators which host and process holds a migration."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Supervisor:
    """Runs migrations from the ledger, ``concurrency`` at a time.

    ``notifier``: systemd's link; the loop itself pings its watchdog, so a loop
    that hangs (a ledger call that never returns) gets the daemon restarted.
    """

    def __init__(
        self,
        settings: config.Settings,
        ledger: Ledger,
        *,
        owner: str | None = None,
        site_opener: SiteOpener | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.daemon = settings.daemon
        self.ledger = ledger
        self.owner = owner or make_owner()
        self.notifier = notifier or Notifier()
        self.signals = Signals()
        self._sites = site_opener or Drivers()
        self.janitor = Janitor(ledger, lambda: self.settings, self._sites.destination)
        # Shared by this daemon's workers: what the running migrations will still write.
        self.space = WorkDirSpace(self.daemon.work_dir)
        # Shared too: the caps count the bytes of every migration this daemon runs.
        self.bandwidth = Bandwidth(
            lambda site: self.settings.cap(site), stop=self.signals.shutting_down
        )
        self._running = Running(self.signals)
        self._wake = Wakeup()

    def stop(self) -> None:
        """Stop claiming; running steps stop at their next checkpoint."""
        self.signals.shutting_down.set()
        self._wake.now()

    def wake(self) -> None:
        """Look for due migrations now (new ones were just recorded)."""
        self._wake.now()

    def reload(self, settings: config.Settings) -> None:
        """Use ``settings`` from now on. Sites are opened per claim, so a changed
        site applies to the next migration claimed; running ones keep theirs."""
        self.settings = settings
        self.daemon = settings.daemon
        self._wake.now()

    def summary(self) -> str:
        """One line for ``systemctl status``: running here, queued, failed in the last hour."""
        running = len(self._running)
        try:
            queued, failed = self.ledger.count_queued_and_failed_since(
                utcnow() - timedelta(hours=1)
            )
        except Exception as exc:
            return f"{running} running; ledger unavailable: {_one_line(exc)}"[:200]
        return f"{running} running, {queued} queued, {failed} failed in the last hour"

    def run(self, *, until_idle: bool = False, busy: Callable[[], bool] = lambda: False) -> None:
        """Drive migrations until stopped; ``until_idle``: until none is left and
        ``busy()`` (e.g. the intake still holding jobs) says nothing more comes."""
        log.info("supervisor %s starting (concurrency %d)", self.owner, self.daemon.concurrency)
        self.daemon.work_dir.mkdir(parents=True, exist_ok=True)
        # Cleanups can wait on slow sites: the watchdog is kept fed meanwhile.
        self.sweep(between=lambda: self.notifier.tick(self.summary))
        self.notifier.ready(self.summary)
        heartbeat = threading.Thread(
            target=self._running.keep_leases,
            args=(self.ledger, self.owner, lambda: self.daemon.lease_seconds),
            name="heartbeat",
            daemon=True,
        )
        heartbeat.start()
        janitor = threading.Thread(target=self._janitor, name="janitor", daemon=True)
        janitor.start()
        with ThreadPoolExecutor(self.daemon.concurrency, thread_name_prefix="migration") as pool:
            while not self.signals.shutting_down.is_set():
                self.notifier.tick(self.summary)
                try:
                    self._reap()
                    self._fill(pool)
                    if (
                        until_idle
                        and not self._running
                        and self.ledger.count_active() == 0
                        and not busy()
                    ):
                        break
                except LedgerError as exc:
                    # The ledger is down (PostgreSQL restart, full disk): keep running,
                    # running steps fail their own writes and are retried later.
                    log.warning("ledger unavailable, retrying: %s", exc.reason)
                    self.signals.shutting_down.wait(
                        self.notifier.pause_limit(self.daemon.lease_seconds / 3)
                    )
                self._wake.wait(self.notifier.pause_limit(self.daemon.poll_seconds))
            wait(self._running.workers())
            self._reap()
        self.signals.shutting_down.set()
        heartbeat.join(timeout=5)
        janitor.join(timeout=5)
        log.info("supervisor %s stopped", self.owner)

    def sweep(self, between: Callable[[], None] = lambda: None) -> None:
        """Finish cleanups of ended migrations that are due (see ``Janitor``)."""
        self.janitor.sweep(between)

    def end_now(self, migration_id: str, trigger: Trigger, reason: str) -> bool:
        """Fail or cancel a migration no daemon holds; False if one does."""
        if not self.ledger.acquire(migration_id, self.owner, self.daemon.lease_seconds):
            return False
        migration = self.ledger.get(migration_id)
        try:
            with ExitStack() as stack:
                destination = (
                    self.janitor.destination_or_none(migration.dest_site, stack)
                    if self.janitor.needs_destination(migration)
                    else None
                )
                self._finish(migration, trigger, reason, destination)
        finally:
            self._release(migration_id)
        return True

    # ---- loop internals --------------------------------------------------------

    def _fill(self, pool: ThreadPoolExecutor) -> None:
        while len(self._running) < self.daemon.concurrency:
            if self.signals.shutting_down.is_set():
                return
            migration = self.ledger.claim(
                self.owner,
                self.daemon.lease_seconds,
                skip=self._running.ids(),
                slots=self.settings.slots,
            )
            if migration is None:
                return
            future = pool.submit(self._drive, migration)
            future.add_done_callback(lambda _future: self._wake.now())
            self._running.add(migration.id, future)

    def _reap(self) -> None:
        for migration_id, worker in self._running.reap():
            if (error := worker.exception()) is not None:
                log.error("migration %s: worker crashed: %r", migration_id, error)

    def _janitor(self) -> None:
        """Retry removals that failed, each on its own backoff (kept in the ledger)."""
        while not self.signals.shutting_down.wait(self.daemon.poll_seconds * JANITOR_POLLS):
            try:
                self.sweep()
            except Exception as exc:
                log.warning("janitor: cannot sweep leftovers now: %s", _one_line(exc))

    # ---- one migration ---------------------------------------------------------

    def _drive(self, migration: Migration) -> None:
        """Advance one migration state by state while we hold its lease."""
        try:
            with (
                logs.migration_context(
                    migration=migration.id,
                    state=migration.state,
                    source_site=migration.source_site,
                    dest_site=migration.dest_site,
                ) as context,
                ExitStack() as sites,
            ):
                self._advance_all(migration, sites, context)
        except LeaseLost as exc:
            log.warning("migration %s: %s", migration.id, exc)
        except Exception as exc:
            # Never hand it straight back: a fault that repeats would be re-claimed
            # at once, forever. The retry schedule spaces the attempts out.
            log.exception("migration %s: unexpected error", migration.id)
            self._postpone(migration.id, exc)
        finally:
            self.space.release(migration.id)

    def _advance_all(
        self, migration: Migration, sites: ExitStack, log_context: dict[str, str]
    ) -> None:
        try:
            source = self._source(migration.source_site, sites)
            destination = self._destination(migration.dest_site, sites)
        except ConfigError as exc:
            metrics.failure(exc)
            self._finish(migration, Trigger.FAIL, str(exc), None)
            return
        while True:
            migration = self.ledger.get(migration.id)
            log_context["state"] = migration.state
            if migration.lease_owner != self.owner or is_terminal(migration.state):
                return
            if migration.cancel_requested:
                self._finish(migration, Trigger.CANCEL, "cancelled by operator", destination)
                return
            step = Step(
                migration,
                ledger=self.ledger,
                owner=self.owner,
                source=source,
                destination=destination,
                work_dir=self.daemon.work_dir,
                signals=self.signals,
                progress_seconds=self.daemon.progress_seconds,
                stall_seconds=self.daemon.stall_seconds,
                space=self.space,
                bandwidth=self.bandwidth,
            )
            if not self._advance_one(step):
                return
            if self.signals.shutting_down.is_set():
                self._release(migration.id)
                return

    def _advance_one(self, step: Step) -> bool:
        """Run the handler of the current state; True if the migration moved on."""
        migration = step.migration
        try:
            advance = HANDLERS[migration.state](step)
        except CancelRequested:
            self._finish(migration, Trigger.CANCEL, "cancelled by operator", step.destination)
        except ShuttingDown:
            log.info("migration %s: paused in %s for shutdown", migration.id, migration.state)
            self._release(migration.id)
        except WaitingForSpace as exc:
            # Handed back, no lease or worker held meanwhile, no attempt counted.
            if self.ledger.wait(migration.id, self.owner, self.daemon.space_wait_seconds, str(exc)):
                log.info("migration %s: %s", migration.id, exc)
            self._wake.after(self.daemon.space_wait_seconds)
        except PermanentError as exc:
            metrics.failure(exc)
            self._finish(migration, Trigger.FAIL, _one_line(exc), step.destination)
        except TransientError as exc:
            self._retry_or_fail(migration, _one_line(exc), step.destination, cause=exc)
        except LeaseLost:
            raise
        except Exception as exc:
            log.exception("migration %s: unexpected error in %s", migration.id, migration.state)
            self._retry_or_fail(migration, _one_line(exc), step.destination, cause=exc)
        else:
            faults.point("transition.before_commit", migration.state)
            moved = self.ledger.transition(
                migration.id,
                self.owner,
                advance.trigger,
                advance.message,
                keep=advance.keep,
                **advance.fields,
            )
            faults.point("transition.after_commit", migration.state)
            metrics.transition(migration, moved)
            log.info(
                "migration %s: %s -> %s: %s",
                migration.id,
                migration.state,
                moved.state,
                advance.message,
            )
            if is_terminal(moved.state):
                self.janitor.clean_up(moved, step.destination, succeeded=True)
                return False
            return True
        return False

    def _retry_or_fail(
        self,
        migration: Migration,
        reason: str,
        destination: DestinationSite | None,
        *,
        cause: BaseException,
    ) -> None:
        attempt = migration.attempt + 1
        limit = self.daemon.retry.max_attempts
        if attempt >= limit:
            metrics.failure(cause)
            self._finish(
                migration, Trigger.FAIL, f"gave up after {attempt} attempts: {reason}", destination
            )
            return
        delay = backoff_delay(self.daemon.retry, attempt)
        log.warning(
            "migration %s: attempt %d/%d failed (%s); retrying in %.1fs",
            *(migration.id, attempt, limit, reason, delay),
        )
        self.ledger.schedule_retry(migration.id, self.owner, attempt, delay, reason)
        self._wake.after(delay)
        metrics.retry(cause)

    def _finish(
        self,
        migration: Migration,
        trigger: Trigger,
        reason: str,
        destination: DestinationSite | None,
    ) -> None:
        """Fail or cancel: clean up first, so an ended migration leaves nothing behind."""
        self.janitor.clean_up(migration, destination, succeeded=False)
        ended = self.ledger.transition(migration.id, self.owner, trigger, reason, last_error=reason)
        self.janitor.after_end(ended)
        metrics.transition(migration, ended)
        log.warning("migration %s: %s: %s", migration.id, trigger.value, reason)

    # ---- helpers ---------------------------------------------------------------

    def _source(self, site_id: str, stack: ExitStack) -> SourceDriver:
        site = self._sites.source(self.settings.site(site_id))
        stack.callback(site.close)
        return site

    def _destination(self, site_id: str, stack: ExitStack) -> DestinationDriver:
        site = self._sites.destination(self.settings.site(site_id))
        stack.callback(site.close)
        return site

    def _postpone(self, migration_id: str, cause: BaseException) -> None:
        """Schedule the next attempt with backoff; if even that fails, the lease
        simply expires (no sooner than ``lease_seconds``)."""
        try:
            migration = self.ledger.get(migration_id)
            if migration.lease_owner == self.owner and not is_terminal(migration.state):
                self._retry_or_fail(migration, _one_line(cause), None, cause=cause)
            elif migration.lease_owner == self.owner:
                self._release(migration_id)
        except Exception as exc:
            log.warning("migration %s: cannot schedule a retry: %s", migration_id, exc)

    def _release(self, migration_id: str) -> None:
        try:
            self.ledger.release(migration_id, self.owner)
        except Exception as exc:
            log.warning("migration %s: cannot release lease: %s", migration_id, exc)


def _one_line(exc: BaseException) -> str:
    return one_line(exc, 500) or type(exc).__name__
