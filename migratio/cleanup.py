"""Removal of what a migration left behind: temp files and destination records.

Runs when a migration ends, whatever the end. What became the result was settled
as ``kept`` by the registering state; every other artifact still ``present`` is
removed, newest first (an AMI goes before the snapshot it uses). Each removal is
settled in the ledger as it happens, so an interrupted cleanup resumes where it was.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from migratio.drivers.base import DestinationSite
from migratio.errors import MigratioError
from migratio.ledger.store import Ledger, Migration

log = logging.getLogger(__name__)


def clean_up(
    ledger: Ledger,
    migration: Migration,
    destination: DestinationSite | None,
    work_dir: Path,
    *,
    succeeded: bool,
) -> bool:
    """Remove the migration's leftovers; True when nothing is left to remove."""
    complete = True
    for artifact in reversed(ledger.artifacts(migration.id)):
        if artifact.kind == "file":
            Path(artifact.ref).unlink(missing_ok=True)
        elif destination is None:
            complete = False
            continue
        else:
            try:
                destination.remove(artifact.ref)
            except MigratioError as exc:
                log.warning(
                    "migration %s: cannot remove %s %s yet: %s",
                    migration.id,
                    artifact.kind,
                    artifact.ref,
                    exc,
                )
                complete = False
                continue
        ledger.settle_artifact(artifact.id, "removed")
    if not succeeded and destination is not None and complete:
        complete = _remove_untracked_record(migration, destination)
    shutil.rmtree(work_dir / migration.id, ignore_errors=True)
    return complete


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
