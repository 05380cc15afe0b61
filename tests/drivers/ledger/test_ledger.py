"""The ledger on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from migratio.errors import IllegalTransition, LeaseLost, UsageError
from migratio.ledger.database import current_revision, head_revision, upgrade
from migratio.ledger.schema import SCHEMA_HEAD
from migratio.ledger.store import Ledger
from migratio.machine import Trigger
from tests.support.engine import HAPPY_PATH
from tests.support.ledgers import empty_ledger_engine


def test_schema_upgrade_is_idempotent(ledger: Ledger) -> None:
    upgrade(ledger.engine)
    assert current_revision(ledger.engine) == "0007" == SCHEMA_HEAD
    assert head_revision(ledger.engine) == SCHEMA_HEAD


def test_every_transition_has_its_audit_row(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    assert ledger.claim("daemon-1", 30) is not None
    for trigger in ("start", "exported", "converted", "uploaded", "registered"):
        ledger.transition(migration.id, "daemon-1", trigger, f"did {trigger}")
    final = ledger.get(migration.id)
    assert final.state == "done"
    assert final.finished_at is not None
    assert final.lease_owner is None
    history = ledger.history(migration.id)
    assert [(row.from_state, row.to_state) for row in history] == HAPPY_PATH
    assert [row.message for row in history[1:]] == [
        "did start",
        "did exported",
        "did converted",
        "did uploaded",
        "did registered",
    ]
    assert all(row.pid > 0 and row.host for row in history)
    assert [row.at for row in history] == sorted(row.at for row in history)


def test_illegal_transition_writes_nothing(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    ledger.claim("daemon-1", 30)
    with pytest.raises(IllegalTransition):
        ledger.transition(migration.id, "daemon-1", "uploaded", "skip ahead")
    assert ledger.get(migration.id).state == "queued"
    assert len(ledger.history(migration.id)) == 1


def test_writes_are_fenced_by_the_lease(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    ledger.claim("daemon-1", 30)
    with pytest.raises(LeaseLost):
        ledger.transition(migration.id, "daemon-2", "start", "not mine")
    with pytest.raises(LeaseLost):
        ledger.record(migration.id, "daemon-2", bytes_done=5)
    assert ledger.renew("daemon-2", [migration.id], 30) == {migration.id}
    assert ledger.renew("daemon-1", [migration.id], 30) == set()
    # Ended by its holder (the lease goes with the last transition): not lost.
    ledger.transition(migration.id, "daemon-1", Trigger.CANCEL, "cancelled by operator")
    assert ledger.renew("daemon-1", [migration.id], 30) == set()


def test_expired_lease_is_taken_over_with_a_note(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    assert ledger.claim("daemon-1", 0.2) is not None
    assert ledger.claim("daemon-2", 30) is None
    time.sleep(0.4)
    taken = ledger.claim("daemon-2", 30)
    assert taken is not None and taken.lease_owner == "daemon-2"
    note = ledger.history(migration.id)[-1]
    assert note.from_state == note.to_state == "queued"
    assert "taken over from daemon-1" in note.message


def test_retry_waits_for_its_time(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    ledger.claim("daemon-1", 30)
    ledger.schedule_retry(migration.id, "daemon-1", 1, 60, "connection refused")
    assert ledger.claim("daemon-1", 30) is None
    row = ledger.get(migration.id)
    assert (row.attempt, row.last_error, row.lease_owner) == (1, "connection refused", None)
    assert "retrying in 60.0s: connection refused" in ledger.history(migration.id)[-1].message


def test_a_wait_costs_no_attempt_and_is_noted_once_however_often_it_is_looked_at(
    ledger: Ledger,
) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    written = []
    for free in (1, 2, 3):
        assert ledger.claim("daemon-1", 30) is not None
        written.append(ledger.wait(migration.id, "daemon-1", 0, f"waiting for space: {free}"))
    assert written == [True, False, False]
    ledger.claim("daemon-1", 30)
    ledger.wait(migration.id, "daemon-1", 60, "waiting for space: 4")
    assert ledger.claim("daemon-1", 30) is None  # not due for a minute
    row = ledger.get(migration.id)
    assert (row.attempt, row.last_error, row.lease_owner) == (0, None, None)
    notes = [t.message for t in ledger.history(migration.id) if t.from_state == t.to_state]
    assert notes == ["waiting for space: 1"]


def test_concurrent_claims_never_share_a_migration(ledger: Ledger) -> None:
    created = {ledger.create("site-a", "site-b", f"image-{n}").id for n in range(24)}
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker(owner: str) -> None:
        while (migration := ledger.claim(owner, 60)) is not None:
            with lock:
                claimed.setdefault(migration.id, []).append(owner)

    threads = [threading.Thread(target=worker, args=(f"daemon-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(claimed) == created
    assert all(len(owners) == 1 for owners in claimed.values())


def test_artifacts_are_recorded_once_and_settled(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "image-1")
    ledger.add_artifact(migration.id, "file", "/work/x.part")
    ledger.add_artifact(migration.id, "file", "/work/x.part")
    ledger.add_artifact(migration.id, "dest_image", "abc", "site-b")
    present = ledger.artifacts(migration.id)
    assert [(a.kind, a.ref) for a in present] == [("file", "/work/x.part"), ("dest_image", "abc")]
    ledger.settle_artifact(present[0].id, "removed")
    assert [a.ref for a in ledger.artifacts(migration.id)] == ["abc"]
    assert [a.status for a in ledger.artifacts(migration.id, status=None)] == ["removed", "present"]


def test_find_matches_id_prefixes_literally(ledger: Ledger) -> None:
    migration = ledger.create("site-a", "site-b", "img")
    assert ledger.find(migration.id[:6]).id == migration.id
    assert ledger.find(migration.id).id == migration.id
    for pattern in (migration.id[:6] + "_", "%", "ABC", "a\\", "", "x" * 37):
        with pytest.raises(UsageError):
            ledger.find(pattern)


def test_reading_takes_no_write_lock_on_sqlite(tmp_path: Path) -> None:
    """`migratio status` must neither wait for nor hold up a daemon's write."""
    engine = empty_ledger_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    upgrade(engine)
    ledger = Ledger(engine)
    migration = ledger.create("site-a", "site-b", "img")
    writer = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a daemon in the middle of a write
    try:
        started = time.monotonic()
        assert [m.id for m in ledger.migrations()] == [migration.id]
        assert ledger.get(migration.id).state == "queued"
        assert time.monotonic() - started < 2  # the busy timeout is 30 s
    finally:
        writer.rollback()
        writer.close()
        engine.dispose()
