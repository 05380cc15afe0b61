"""Removal of what a migration left behind: temp files and destination records.

Runs on success (the result is kept), failure and cancel. Each artifact is settled
in the ledger as it goes, so a cleanup interrupted by a crash resumes where it was.
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
    keep_result: bool,
) -> bool:
    """Remove the migration's artifacts; True when nothing is left to remove."""
    complete = True
    for artifact in ledger.artifacts(migration.id):
        if artifact.kind == "file":
            Path(artifact.ref).unlink(missing_ok=True)
            ledger.settle_artifact(artifact.id, "removed")
        elif (
            artifact.kind == "dest_image"
            and keep_result
            and artifact.ref == migration.dest_image_id
        ):
            ledger.settle_artifact(artifact.id, "kept")
        elif destination is not None:
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
            else:
                ledger.settle_artifact(artifact.id, "removed")
        else:
            complete = False
    if not keep_result and destination is not None and complete:
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
