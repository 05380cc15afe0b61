"""``migratio run``: the supervisor, the Redis intake and the feedback deliverer, wired here.

Each part runs in its own thread and can be switched off in the config
(``migrate``, ``intake``, ``feedback``). Redis being away stops neither the
supervisor nor the ledger: intake waits for it, feedback waits in the ledger.

Under systemd (``Type=notify``) the daemon reports READY once its start-up
sweep is done, feeds the watchdog from its main loop, keeps a one-line STATUS,
and reloads its config and site files on SIGHUP.
"""

from __future__ import annotations

import logging
import threading

from migratio import config, logs
from migratio.errors import ConfigError
from migratio.feedback.deliverer import Deliverer
from migratio.feedback.outbox import Outbox
from migratio.intake.consumer import WAIT_SECONDS, Consumer
from migratio.ledger.store import Ledger
from migratio.metrics import hooks as metrics
from migratio.redis_link import RedisLink, redacted
from migratio.supervisor import Supervisor
from migratio.systemd import Notifier

log = logging.getLogger(__name__)

# On stop, feedback still in the outbox gets this long to reach Redis.
FLUSH_SECONDS = 5.0


class Daemon:
    """Everything ``migratio run`` does, for one config and one ledger."""

    def __init__(
        self, settings: config.Settings, ledger: Ledger, *, notifier: Notifier | None = None
    ) -> None:
        daemon = settings.daemon
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.supervisor = Supervisor(settings, ledger, notifier=self.notifier)
        self.link: RedisLink | None = None
        self.consumer: Consumer | None = None
        self.deliverer: Deliverer | None = None
        if daemon.intake or daemon.feedback:
            self.link = RedisLink(
                daemon.redis_url,
                read_timeout=WAIT_SECONDS + daemon.redis_timeout,
                connect_timeout=daemon.redis_connect_timeout,
            )
        outbox = Outbox(ledger) if daemon.feedback else None
        if daemon.intake and self.link is not None:
            self.consumer = Consumer(
                settings,
                ledger,
                self.link,
                self.supervisor.owner,
                outbox=outbox,
                on_created=self.supervisor.wake,
            )
        if outbox is not None and self.link is not None:
            self.deliverer = Deliverer(outbox, self.link, daemon.namespace)
        self._stopping = threading.Event()
        self._reload_requested = threading.Event()

    def stop(self) -> None:
        """Stop taking jobs and claiming migrations; running steps stop at a checkpoint."""
        self.notifier.stopping()
        self._stopping.set()
        self._reload_requested.set()  # wakes the reloader, which then ends
        if self.consumer is not None:
            self.consumer.stop()
        self.supervisor.stop()

    def request_reload(self) -> None:
        """Read the config and site files again soon (safe from a signal handler)."""
        self._reload_requested.set()

    def reload(self) -> bool:
        """Read the config and site files again; a file that does not load is refused
        with one log line and the running config is kept. Running migrations go on
        with the sites they opened; the next claim uses the new ones."""
        self.notifier.reloading()
        try:
            return self._apply_fresh_settings()
        finally:
            self.notifier.ready(self._summary)

    def _apply_fresh_settings(self) -> bool:
        try:
            settings, pending = config.reload_settings(self.settings)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return False
        before, after = set(self.settings.sites), set(settings.sites)
        self.settings = settings
        self.supervisor.reload(settings)
        if self.consumer is not None:
            self.consumer.settings = settings
        daemon = settings.daemon
        logs.configure(
            level=daemon.log_level,
            library_level=daemon.log_level_libraries,
            log_format=daemon.log_format,
        )
        log.info(
            "reloaded %s: sites %s (added: %s; removed: %s)",
            settings.path,
            ", ".join(sorted(after)) or "none",
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )
        if pending:
            log.warning("changed %s: takes effect at the next restart", ", ".join(pending))
        return True

    def run(self, *, until_idle: bool = False) -> None:
        daemon = self.settings.daemon
        metrics.start(self.settings, self.supervisor.ledger)
        if self.link is not None:
            log.info("redis %s, namespace %r", redacted(self.link.url), daemon.namespace)
        if self.consumer is not None:
            self.consumer.start()
        if self.deliverer is not None:
            self.deliverer.start()
        reloader = threading.Thread(target=self._reloader, name="reload", daemon=True)
        reloader.start()
        try:
            if daemon.migrate:
                self.supervisor.run(until_idle=until_idle, busy=self._intake_busy)
            else:
                self._front_end(until_idle=until_idle)
        finally:
            self._stopping.set()
            self._reload_requested.set()
            self._shut_down()
            reloader.join(timeout=5)

    def _front_end(self, *, until_idle: bool) -> None:
        """``migrate: false``: intake and feedback run in their threads; this loop
        only feeds the watchdog and the status line."""
        log.info("migrate: false: only intake and feedback run here")
        self.notifier.ready(self._summary)
        while not self._stopping.wait(self.notifier.pause_limit(self.settings.daemon.poll_seconds)):
            self.notifier.tick(self._summary)
            if until_idle and not self._intake_busy():
                break

    def _summary(self) -> str:
        if self.settings.daemon.migrate:
            return self.supervisor.summary()
        busy = "taking jobs" if self._intake_busy() else "idle"
        return f"intake and feedback only; {busy}"

    def _reloader(self) -> None:
        """Reloads run here, not in the signal handler: it would interrupt the main
        loop at any line, possibly while it holds a lock the reload needs."""
        while True:
            self._reload_requested.wait()
            self._reload_requested.clear()
            if self._stopping.is_set():
                return
            try:
                self.reload()
            except Exception:
                log.exception("reload failed; the running config stays")

    def _intake_busy(self) -> bool:
        return self.consumer is not None and not self.consumer.idle

    def _shut_down(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer.join()
        if self.deliverer is not None:
            self.deliverer.stop(FLUSH_SECONDS)
            self.deliverer.join()
        if self.link is not None:
            self.link.close()
        metrics.stop()
