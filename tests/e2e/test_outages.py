"""Faults from outside: a destination Glance that restarts, a work dir that turns
read-only or fills up. Each one must end in a definite state, retried within the
budget, with nothing left behind and no hot loop.

The other peers' outages (R3) are in test_outages_peers.py, the ledger's in
test_outages_ledger.py, Redis's (R2) in test_outages_redis.py. An outage lasts
``MIGRATIO_OUTAGE_SECONDS`` (tests/support/outages.py): 5 s by default, 60 s
under support/chaos.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import testbed_lib
from openstack.connection import Connection

from migratio.admission import WAITING_NOTE
from migratio.ledger.store import Ledger
from tests.support import glance_peer, images, migratio_cli, outages
from tests.support.daemon_config import write_daemon_config
from tests.support.reliability import record

pytestmark = pytest.mark.testbed

# Enough attempts to outlast a 60 s outage whatever the jitter (each waits 0.5-2 s
# once the delay is capped, and a refused connection fails at once).
OUTLASTING = outages.outlasting(60)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def glance_b_back(testbed: testbed_lib.Bed) -> Iterator[None]:
    """Whatever a test does to site-b's Glance, it runs again afterwards."""
    yield
    testbed_lib.start_service(testbed.dir, "glance-site-b")


def _stop_glance_b_mid_upload(
    config: Path, site_a: Connection, tmp_path: Path, size_mib: int
) -> tuple[subprocess.Popen[bytes], Ledger, str, Path]:
    source_file = images.random_qcow2(tmp_path / "outage.qcow2", size_mib)
    source_id = glance_peer.upload(site_a, source_file, name="outage-template")
    migration_id = migratio_cli.submit(config, source_id)
    running, ledger = migratio_cli.start_and_wait(
        config,
        migration_id,
        tmp_path / "migratio_cli.log",
        state="uploading",
        min_bytes=8 * images.MIB,
    )
    return running, ledger, migration_id, source_file


@pytest.mark.reliability
def test_destination_glance_down_mid_upload_ends_done_with_one_image(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    site_a: Connection,
    site_b: Connection,
    glance_b_back: None,
) -> None:
    """Down for ``MIGRATIO_OUTAGE_SECONDS`` (5 s by default, 60 s under support/chaos)."""
    seconds = outages.outage_seconds()
    config = write_daemon_config(tmp_path, testbed.dir / "sites", retry=outages.outlasting(seconds))
    running, ledger, migration_id, source_file = _stop_glance_b_mid_upload(
        config, site_a, tmp_path, 384
    )
    try:
        outage = outages.take_down(
            lambda: testbed_lib.stop_service(testbed.dir, "glance-site-b"),
            lambda: testbed_lib.start_service(testbed.dir, "glance-site-b"),
            seconds,
        )
        assert ledger.get(migration_id).state not in ("done", "failed")
        recover = outages.recovery_seconds(ledger, migration_id, outage.returned_at)
        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=300)
        assert outages.still_running(running)
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0

    assert outage.down_for >= seconds
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "done" and shown["error"] is None
    retries = [row for row in shown["history"] if "failed, retrying" in row["message"]]
    assert retries, "the outage should have cost at least one attempt"
    tagged = glance_peer.find(site_b, migratio_migration_id=migration_id)
    assert [image["id"] for image in tagged] == [shown["dest_image_id"]]
    assert tagged[0]["status"] == "active"
    assert tagged[0]["os_hash_value"] == images.sha512_of(source_file)
    assert all(artifact["status"] != "present" for artifact in shown["artifacts"])
    record(
        "R3", "destination Glance (mid-upload)", outcome="done",
        outage_s=round(outage.down_for, 1), recover_s=round(recover, 2), images=1, leaked=0,
        daemon_restarts=0,
    )  # fmt: skip


def test_a_migration_failed_while_glance_was_down_leaves_no_record_once_it_is_back(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    site_a: Connection,
    site_b: Connection,
    glance_b_back: None,
) -> None:
    retry = {"max_attempts": 2, "base_delay": 0.2, "max_delay": 1.0}
    config = write_daemon_config(tmp_path, testbed.dir / "sites", retry=retry)
    running, ledger, migration_id, _ = _stop_glance_b_mid_upload(config, site_a, tmp_path, 384)
    try:
        testbed_lib.stop_service(testbed.dir, "glance-site-b")
        migratio_cli.wait_for(ledger, migration_id, state="failed", timeout=60)
        pending = [a for a in ledger.artifacts(migration_id) if a.kind == "dest_image"]
        assert len(pending) == 1 and pending[0].last_error, pending
        testbed_lib.start_service(testbed.dir, "glance-site-b")
        # The same daemon, never restarted, removes the record once Glance is back.
        _wait(lambda: not ledger.artifacts(migration_id), 60, "the record's removal")
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0
    assert glance_peer.find(site_b, migratio_migration_id=migration_id) == []
    shown = migratio_cli.show(config, migration_id)
    assert shown["state"] == "failed" and shown["error"].startswith("gave up after 2 attempts")
    removed = [a for a in shown["artifacts"] if a["kind"] == "dest_image"]
    assert [(a["status"], a["last_error"]) for a in removed] == [("removed", None)]
    assert removed[0]["attempts"] >= 1


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts a small tmpfs (skips where mounting is not allowed); unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)


def test_an_unremovable_temp_file_is_recorded_and_retried_without_spinning(
    testbed: testbed_lib.Bed, tmp_path: Path, site_a: Connection, tmpfs: Callable[..., Path]
) -> None:
    work = tmpfs("work", "64m")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    config = write_daemon_config(
        tmp_path, testbed.dir / "sites", work_dir=str(work), database_url=ledger_url
    )
    source_id = glance_peer.upload(
        site_a, images.random_qcow2(tmp_path / "s.qcow2", 2), name="read-only-work-dir"
    )
    migration_id = migratio_cli.submit(config, source_id, dest="site-b-raw")
    # A directory where the staging file goes, and the work dir remounted read-only:
    # neither the staging nor the cleanup can ever remove it.
    planted = work / migration_id / "source.qcow2.part"
    planted.mkdir(parents=True)
    _remount(work, "ro")
    log = tmp_path / "migratio_cli.log"
    running = migratio_cli.start(config, log)
    try:
        ledger = migratio_cli.ledger_of(config)
        migratio_cli.wait_for(ledger, migration_id, state="failed", timeout=60)
        _wait(lambda: _attempts(ledger, migration_id) >= 8, 60, "eight removal attempts")
        lines = [line for line in log.read_text().splitlines() if "cannot remove" in line]
        # One line per power of two: attempts 1, 2, 4 and 8 (and maybe 16).
        assert 3 <= len(lines) <= 5, lines
        assert all("Read-only file system" in line for line in lines)
        assert log.read_text().count("Traceback") <= 3  # the three failed attempts
        [stuck] = ledger.artifacts(migration_id)
        assert stuck.ref == str(planted) and "Read-only file system" in (stuck.last_error or "")
        shown = migratio_cli.show(config, migration_id)
        assert shown["error"].startswith("gave up after 3 attempts")
        assert len(shown["artifacts"]) == 2  # not one more per attempt

        _remount(work, "rw")
        _wait(lambda: not ledger.artifacts(migration_id), 60, "the removal once writable")
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0
    assert not (work / migration_id).exists()
    shown = migratio_cli.show(config, migration_id)
    assert [(a["status"], a["last_error"]) for a in shown["artifacts"]] == [
        ("removed", None),
        ("removed", None),
    ]


def _attempts(ledger: Ledger, migration_id: str) -> int:
    return max((a.attempts for a in ledger.artifacts(migration_id)), default=0)


@pytest.mark.reliability
def test_a_full_work_dir_is_transient_and_the_migration_ends_done_once_space_frees(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    site_a: Connection,
    site_b: Connection,
    tmpfs: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmpfs("work", "24m")
    config = write_daemon_config(
        tmp_path,
        testbed.dir / "sites",
        work_dir=str(work),
        database_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        retry=OUTLASTING,
        space_wait_seconds=0.3,
    )
    # 8 MiB of data staged, 8 MiB more converted: admitted into 24 MiB. Between
    # staging and converting (a pause there), another writer takes 12 MiB: the
    # conversion runs out of space that admission had counted on.
    monkeypatch.setenv("MIGRATIO_FAULTS", "transition.after_commit.exporting=pause:5")
    source_file = images.random_qcow2(tmp_path / "full.qcow2", 8)
    source_id = glance_peer.upload(site_a, source_file, name="work-dir-full")
    migration_id = migratio_cli.submit(config, source_id, dest="site-b-raw")
    running = migratio_cli.start(config, tmp_path / "migratio_cli.log")
    filler = work / "another-writer"
    try:
        ledger = migratio_cli.ledger_of(config)
        migratio_cli.wait_for(ledger, migration_id, state="converting", timeout=60)
        filler.write_bytes(b"\x01" * 12 * images.MIB)

        def full() -> bool:
            return "work dir full" in (ledger.get(migration_id).last_error or "")

        _wait(full, 60, "a full work dir")
        error = ledger.get(migration_id).last_error or ""
        assert f"no space left in {work / migration_id} for converted.raw" in error
        assert "needs up to 8388608 bytes" in error
        assert ledger.get(migration_id).state == "converting"
        # The half-written conversion is gone: only the staged source takes space.
        assert sorted(p.name for p in (work / migration_id).iterdir()) == ["source.qcow2"]
        # The next attempt is not let in while the space is still taken: it waits.
        _wait(lambda: _waiting_notes(ledger, migration_id) != [], 30, "the waiting note")
        filler.unlink()
        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=120)
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0
    shown = migratio_cli.show(config, migration_id)
    full_notes = [row for row in shown["history"] if "work dir full" in row["message"]]
    assert len(full_notes) == 1
    assert len(_waiting_notes(ledger, migration_id)) == 1
    copy = glance_peer.get(site_b, shown["dest_image_id"])
    expected = images.sha512_of(images.as_raw(source_file, tmp_path / "expected.raw"))
    assert copy is not None and copy["os_hash_value"] == expected
    assert list(work.iterdir()) == []
    record(
        "R8",
        "disk full mid-conversion (24 MiB tmpfs, 12 MiB taken by another writer)",
        outcome=shown["state"],
        leftovers=0,
        notes=len(full_notes),
    )


def _waiting_notes(ledger: Ledger, migration_id: str) -> list[str]:
    history = ledger.history(migration_id)
    return [row.message for row in history if row.message.startswith(WAITING_NOTE)]


@pytest.mark.reliability
def test_a_migration_that_does_not_fit_the_work_dir_waits_then_finishes_once_space_frees(
    testbed: testbed_lib.Bed,
    tmp_path: Path,
    site_a: Connection,
    site_b: Connection,
    tmpfs: Callable[..., Path],
) -> None:
    work = tmpfs("work", "16m")
    config = write_daemon_config(
        tmp_path,
        testbed.dir / "sites",
        work_dir=str(work),
        database_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        space_wait_seconds=0.3,
    )
    # Staged (~4 MiB) and converted to raw (4 MiB virtual) beside it: ~8 MiB needed,
    # ~6 MiB free while the operator's 10 MiB file is there.
    filler = work / "operator-left-this"
    filler.write_bytes(b"\x01" * 10 * images.MIB)
    source_file = images.random_qcow2(tmp_path / "admission.qcow2", 4)
    source_id = glance_peer.upload(site_a, source_file, name="admission")
    migration_id = migratio_cli.submit(config, source_id, dest="site-b-raw")
    running = migratio_cli.start(config, tmp_path / "migratio_cli.log")
    try:
        ledger = migratio_cli.ledger_of(config)

        _wait(lambda: _waiting_notes(ledger, migration_id) != [], 60, "the waiting note")
        looked_at = ledger.get(migration_id).next_attempt_at
        _wait(
            lambda: ledger.get(migration_id).next_attempt_at > looked_at + timedelta(seconds=1),
            30,
            "several more looks at the free space",
        )
        [note] = _waiting_notes(ledger, migration_id)
        waiting = ledger.get(migration_id)
        assert (waiting.state, waiting.attempt, waiting.last_error) == ("exporting", 0, None)
        assert f"free in {work}" in note
        assert [p for p in (work / migration_id).glob("*")] == []  # not a byte staged
        filler.unlink()
        migratio_cli.wait_for(ledger, migration_id, state="done", timeout=120)
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0
    shown = migratio_cli.show(config, migration_id)
    assert len(_waiting_notes(ledger, migration_id)) == 1
    copy = glance_peer.get(site_b, shown["dest_image_id"])
    expected = images.sha512_of(images.as_raw(source_file, tmp_path / "expected.raw"))
    assert copy is not None and copy["os_hash_value"] == expected
    assert [c["id"] for c in glance_peer.find(site_b, migratio_migration_id=migration_id)] == [
        shown["dest_image_id"]
    ]
    assert list(work.iterdir()) == []
    record(
        "R8",
        "admission: 16 MiB tmpfs, 10 MiB taken, image needs ~8 MiB",
        outcome=shown["state"],
        leftovers=0,
        notes=1,
    )
