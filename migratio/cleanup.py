"""Removal of what a migration left behind: temp files and destination records.

Runs when a migration ends, whatever the end. What became the result was settled
as ``kept`` by the registering state; every other artifact still ``present`` is
removed, newest first (an AMI goes before the snapshot it uses). Each removal is
settled in the ledger as it happens, so an interrupted cleanup resumes where it was.

A removal that fails (a destination that is down, a read-only work dir) never
stops the migration from ending: the artifact stays ``present`` with the reason,
and the supervisor's janitor tries again on the retry policy's backoff, logging
only the attempts numbered by a power of two.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from migratio.config import RetryPolicy
from migratio.drivers.base import DestinationSite
from migratio.errors import MigratioError
from migratio.group_files import SHARED, group_dir, group_ids, remove_group_dir
from migratio.ledger.store import Artifact, ArtifactStatus, Ledger, Migration
from migratio.retry import backoff_delay
from migratio.text import error_text, one_line

log = logging.getLogger(__name__)


def clean_up(
    ledger: Ledger,
    migration: Migration,
    destination: DestinationSite | None,
    work_dir: Path,
    *,
    succeeded: bool,
    policy: RetryPolicy,
) -> bool:
    """Remove the migration's leftovers that are due; True when nothing is left to remove."""
    complete = True
    for artifact in reversed(ledger.artifacts(migration.id, due_only=True)):
        if artifact.kind == SHARED:
            _release_group_files(ledger, migration, artifact, work_dir)
            continue
        if artifact.kind != "file" and destination is None:
            complete = False
            continue
        try:
            _remove(artifact, destination)
        except Exception as exc:  # recorded and retried later: a cleanup must never spin
            _defer(ledger, migration, artifact, exc, policy)
            complete = False
            continue
        if artifact.attempts:
            log.info("migration %s: removed %s %s", migration.id, artifact.kind, artifact.ref)
        ledger.settle_artifact(artifact.id, ArtifactStatus.REMOVED)
    if complete and ledger.artifacts(migration.id):
        complete = False  # some wait for their retry
    remove_group_files_if_last(ledger, migration, work_dir)
    if not succeeded and destination is not None and complete:
        complete = _remove_untracked_record(migration, destination)
    shutil.rmtree(work_dir / migration.id, ignore_errors=True)
    return complete


def _release_group_files(
    ledger: Ledger, migration: Migration, artifact: Artifact, work_dir: Path
) -> None:
    """This member is done with its group's shared files: the last member to end
    removes them, the others only let go. A failed or cancelled member cleans up
    before its end is committed; it asks again after (``remove_group_files_if_last``),
    so of members ending at once at least one sees all ended."""
    if ledger.group_others_active(artifact.ref, migration.id):
        ledger.settle_artifact(artifact.id, ArtifactStatus.RELEASED)
        return
    remove_group_dir(work_dir, artifact.ref)
    ledger.settle_artifact(artifact.id, ArtifactStatus.REMOVED)
    log.info("migration %s: removed the shared files of group %s", migration.id, artifact.ref)


def remove_group_files_if_last(ledger: Ledger, migration: Migration, work_dir: Path) -> None:
    """Remove the group's files if every other member has ended. For a member that
    ended without a share (it found a copy at its destination, or was cancelled
    while queued), and for one that let go before its end was committed (failed,
    cancelled): a sibling ending meanwhile saw it still active and let go too,
    counting on it."""
    group_id = migration.group_id
    if group_id is not None and group_dir(work_dir, group_id).exists():
        _remove_if_ended(ledger, work_dir, group_id, migration.id)


def remove_ended_groups(ledger: Ledger, work_dir: Path) -> None:
    """Remove the files of every group whose members have all ended. The members'
    own cleanups do this; a daemon killed between a member's end and its cleanup
    (or a group whose ledger rows were purged) would otherwise leave them for good."""
    for group_id in group_ids(work_dir):
        if _remove_if_ended(ledger, work_dir, group_id, migration_id=""):
            log.info("removed the shared files of ended group %s", group_id)


def _remove_if_ended(ledger: Ledger, work_dir: Path, group_id: str, migration_id: str) -> bool:
    """Remove the group's directory unless a member other than ``migration_id``
    is still active; whether it was removed."""
    if ledger.group_others_active(group_id, migration_id):
        return False
    remove_group_dir(work_dir, group_id)
    return True


def _remove(artifact: Artifact, destination: DestinationSite | None) -> None:
    if artifact.kind == "file":
        path = Path(artifact.ref)
        # Checked first: on a read-only file system unlink fails even for a missing file.
        if path.is_symlink() or path.exists():
            path.unlink(missing_ok=True)
    elif destination is not None:
        destination.remove(artifact.ref)


def _defer(
    ledger: Ledger,
    migration: Migration,
    artifact: Artifact,
    exc: Exception,
    policy: RetryPolicy,
) -> None:
    attempt = artifact.attempts + 1
    delay = backoff_delay(policy, attempt)
    reason = _reason(exc)
    ledger.defer_artifact(artifact.id, reason, delay)
    if attempt & (attempt - 1) == 0:  # 1, 2, 4, 8...: a few lines, however long it lasts
        log.warning(
            "migration %s: cannot remove %s %s (attempt %d; next in %.0f s): %s",
            migration.id,
            artifact.kind,
            artifact.ref,
            attempt,
            delay,
            reason,
        )


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    text = one_line(exc) if isinstance(exc, MigratioError) else one_line(error_text(exc))
    return text or type(exc).__name__


def _remove_untracked_record(migration: Migration, destination: DestinationSite) -> bool:
    """A crash between creating a record and writing its artifact row leaves a
    record only its migration-id tag points to."""
    try:
        record = destination.find_record(migration.id)
        if record is not None:
            destination.remove(record.id)
    except MigratioError as exc:
        log.warning("migration %s: cannot look for stray records: %s", migration.id, exc)
        return False
    return True
