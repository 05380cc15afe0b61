"""The janitor: removes what ended migrations left behind, and keeps trying.

A migration's own end (done, failed, cancelled) cleans up first; what could not
be removed then (a destination that was down, a read-only work dir) stays in the
ledger with its reason and its next attempt, and the janitor's sweep retries it
on that schedule. A daemon that crashed between a migration's end and its cleanup
leaves the same trail, swept at the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack

from migratio import config
from migratio.cleanup import clean_up, remove_ended_groups, remove_group_files_if_last
from migratio.drivers.base import DestinationDriver, DestinationSite
from migratio.errors import ConfigError
from migratio.group_files import SHARED
from migratio.ledger.store import Ledger, Migration
from migratio.machine import State

log = logging.getLogger(__name__)

# Only these states put anything at the destination (an untracked record may exist).
AT_THE_DESTINATION = frozenset({State.UPLOADING, State.REGISTERING})
LOCAL_KINDS = frozenset({"file", SHARED})

DestinationOpener = Callable[[config.Site], DestinationDriver]


class Janitor:
    """Cleanup of ended migrations for one daemon: its ledger, its settings (which
    a reload may replace) and a way to open a destination site."""

    def __init__(
        self,
        ledger: Ledger,
        settings: Callable[[], config.Settings],
        open_destination: DestinationOpener,
    ) -> None:
        self.ledger = ledger
        self._settings = settings
        self._open_destination = open_destination

    def clean_up(
        self, migration: Migration, destination: DestinationSite | None, *, succeeded: bool
    ) -> None:
        daemon = self._settings().daemon
        clean_up(
            self.ledger,
            migration,
            destination,
            daemon.work_dir,
            succeeded=succeeded,
            policy=daemon.retry,
        )

    def after_end(self, migration: Migration) -> None:
        """Once a failed or cancelled end is committed (its cleanup ran before):
        remove the group's files if it was the last member, see ``cleanup``."""
        remove_group_files_if_last(self.ledger, migration, self._settings().daemon.work_dir)

    def sweep(self, between: Callable[[], None] = lambda: None) -> None:
        """Finish cleanups of ended migrations that are due: interrupted by a crash,
        or waiting for a retry after a removal failed (``between`` runs before
        each: the supervisor's watchdog ping); then remove the files of groups
        that have ended (a directory listing and a read per group: no ping)."""
        for migration_id in self.ledger.unsettled_terminal():
            between()
            migration = self.ledger.get(migration_id)
            with ExitStack() as stack:
                destination = self.destination_or_none(migration.dest_site, stack)
                self.clean_up(migration, destination, succeeded=migration.state == State.DONE)
        remove_ended_groups(self.ledger, self._settings().daemon.work_dir)

    def needs_destination(self, migration: Migration) -> bool:
        """Whether cleaning ``migration`` up needs its site: it holds something there,
        or it got as far as putting something there. A queued migration is cancelled
        without connecting to its destination (which may well be down)."""
        if migration.state in AT_THE_DESTINATION:
            return True
        return any(a.kind not in LOCAL_KINDS for a in self.ledger.artifacts(migration.id))

    def destination_or_none(self, site_id: str, stack: ExitStack) -> DestinationDriver | None:
        """The site opened for cleanup, or None (logged) when its config is gone or broken."""
        try:
            site = self._open_destination(self._settings().site(site_id))
        except ConfigError as exc:
            log.warning("cannot open site %s for cleanup: %s", site_id, exc)
            return None
        stack.callback(site.close)
        return site
