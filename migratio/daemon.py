"""``migratio run``: the supervisor, the Redis intake and the feedback deliverer, wired here.

Each part runs in its own thread and can be switched off in the config
(``migrate``, ``intake``, ``feedback``). Redis being away stops neither the
supervisor nor the ledger: intake waits for it, feedback waits in the ledger.
"""

from __future__ import annotations

import logging
import threading

from migratio import config
from migratio.feedback.deliverer import Deliverer
from migratio.feedback.outbox import Outbox
from migratio.intake.consumer import WAIT_SECONDS, Consumer
from migratio.ledger.store import Ledger
from migratio.redis_link import RedisLink, redacted
from migratio.supervisor import Supervisor

log = logging.getLogger(__name__)

# On stop, feedback still in the outbox gets this long to reach Redis.
FLUSH_SECONDS = 5.0


class Daemon:
    """Everything ``migratio run`` does, for one config and one ledger."""

    def __init__(self, settings: config.Settings, ledger: Ledger) -> None:
        daemon = settings.daemon
        self.settings = settings
        self.supervisor = Supervisor(settings, ledger)
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

    def stop(self) -> None:
        """Stop taking jobs and claiming migrations; running steps stop at a checkpoint."""
        self._stopping.set()
        if self.consumer is not None:
            self.consumer.stop()
        self.supervisor.stop()

    def run(self, *, until_idle: bool = False) -> None:
        daemon = self.settings.daemon
        if self.link is not None:
            log.info("redis %s, namespace %r", redacted(self.link.url), daemon.namespace)
        if self.consumer is not None:
            self.consumer.start()
        if self.deliverer is not None:
            self.deliverer.start()
        try:
            if daemon.migrate:
                self.supervisor.run(until_idle=until_idle, busy=self._intake_busy)
            else:
                log.info("migrate: false: only intake and feedback run here")
                while not self._stopping.wait(daemon.poll_seconds):
                    if until_idle and not self._intake_busy():
                        break
        finally:
            self._shut_down()

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
