"""Block manifests of migrated versions on SQLite and a real PostgreSQL: kept by the
lease holder only, found by image (the newest finished migration on the route) and
by record; a job's named base reaches its migration."""

from __future__ import annotations

import pytest

from migratio.errors import LeaseLost
from migratio.ledger.store import JobRequest, Ledger, Migration

STEPS = ("start", "exported", "converted", "uploaded", "registered")


def _migrated(ledger: Ledger, image_id: str, record_id: str, manifest: bytes) -> Migration:
    """A migration of ``image_id`` taken to done, its manifest kept on the way."""
    migration = ledger.create("site-a", "aws-a", image_id)
    assert ledger.claim("d1", 30) is not None
    for trigger in STEPS:
        if trigger == "registered":
            ledger.keep_manifest(migration.id, "d1", record_id, manifest)
        ledger.transition(migration.id, "d1", trigger, trigger, dest_image_id=f"ami-{record_id}")
    return ledger.get(migration.id)


def test_the_newest_finished_version_and_its_manifest_are_found(ledger: Ledger) -> None:
    older = _migrated(ledger, "v1", "snap-1", b"\x01" * 52)
    newer = _migrated(ledger, "v1", "snap-2", b"\x02" * 52)
    running = ledger.create("site-a", "aws-a", "v1")  # not finished: never a base

    kept = ledger.latest_version("site-a", "aws-a", "v1")
    assert kept is not None
    assert (kept.migration_id, kept.record_id, kept.result_id, kept.manifest) == (
        newer.id,
        "snap-2",
        "ami-snap-2",
        b"\x02" * 52,
    )
    assert kept.migration_id != running.id
    assert ledger.latest_version("site-b", "aws-a", "v1") is None  # another source site
    assert ledger.latest_version("site-a", "aws-b", "v1") is None  # another destination
    by_record = ledger.version_of_record("aws-a", "snap-1")
    assert by_record is not None and by_record.migration_id == older.id
    assert ledger.version_of_record("aws-b", "snap-1") is None


def test_only_the_lease_holder_keeps_a_manifest_and_a_job_s_base_is_recorded(
    ledger: Ledger,
) -> None:
    [recorded] = ledger.accept_jobs(
        [JobRequest("job-1", "site-a", "aws-a", "v2", "test", base_image_id="v1")]
    )
    assert ledger.get(recorded.migration_id).base_image_id == "v1"
    assert ledger.claim("d1", 30) is not None
    with pytest.raises(LeaseLost):
        ledger.keep_manifest(recorded.migration_id, "d2", "snap-9", b"x")
    ledger.keep_manifest(recorded.migration_id, "d1", "snap-9", b"x")
    ledger.keep_manifest(recorded.migration_id, "d1", "snap-9", b"y")  # a resumed run
    kept = ledger.version_of_record("aws-a", "snap-9")
    assert kept is not None and kept.manifest == b"y"
