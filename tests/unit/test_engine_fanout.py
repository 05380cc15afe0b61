"""Fan-out groups on stub sites: one read of the source for every member, each
member with its own state machine, retries and audit trail, and the group's
shared files removed by the member that ends last.

The stub source counts its reads (``bed.source.reads``); qemu-img conversions are
counted by wrapping ``qemu.convert`` (the real one still runs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from migratio import operations, qemu
from migratio.drivers.base import Provenance
from migratio.errors import PermanentError, TransientError
from migratio.group_files import SHARED, group_dir
from migratio.ledger.models import TRANSITIONS
from migratio.ledger.store import Migration
from migratio.machine import TERMINAL, Trigger
from tests.support.engine import (
    DESTINATION,
    HAPPY_PATH,
    KIB,
    SOURCE,
    EngineBed,
    at_transition,
    payload,
    sha512,
)

RAW = payload(384 * KIB, seed=13)


def _group(bed: EngineBed, image_id: str, *destinations: str) -> list[Migration]:
    members = bed.ledger.create_group(SOURCE, destinations, image_id, message="fan-out test")
    assert len({m.group_id for m in members}) == 1 and members[0].group_id is not None
    return members


def _ended_last(bed: EngineBed, members: list[Migration]) -> str:
    """The destination of the member whose end committed last. Audit rows are
    numbered in commit order (SQLite lets one writer in at a time); a member's
    finished_at is read before its commit, so two ending at once can commit in
    the other order."""
    ended = (
        select(TRANSITIONS.c.migration_id)
        .where(
            TRANSITIONS.c.migration_id.in_([m.id for m in members]),
            TRANSITIONS.c.to_state.in_([s.value for s in TERMINAL]),
            TRANSITIONS.c.from_state != TRANSITIONS.c.to_state,
        )
        .order_by(TRANSITIONS.c.id.desc())
        .limit(1)
    )
    with bed.ledger.engine.connect() as connection:
        last = connection.execute(ended).scalar_one()
    return next(m.dest_site for m in members if m.id == last)


def _count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    convert: Callable[..., None] = qemu.convert

    def counted(source: Path, source_format: str, target: Path, target_format: str) -> None:
        made.append(target_format)
        convert(source, source_format, target, target_format)

    monkeypatch.setattr(qemu, "convert", counted)
    return made


def _raw_of_qcow2(data: bytes, directory: Path) -> bytes:
    qcow2, raw = directory / "got.qcow2", directory / "got.raw"
    qcow2.write_bytes(data)
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw)], check=True
    )
    return raw.read_bytes()


def _shares(bed: EngineBed, members: list[Migration]) -> dict[str, str]:
    """Each member's settled share of the group's files: released or removed."""
    return {
        m.dest_site: str(a.status)
        for m in members
        for a in bed.ledger.artifacts(m.id, status=None)
        if a.kind == SHARED
    }


def test_a_group_of_three_reads_the_source_once_and_converts_once(
    engine_bed: EngineBed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bed = engine_bed
    site_c = bed.add_destination("site-c", required_disk_format="qcow2")
    site_d = bed.add_destination("site-d", required_disk_format="qcow2")
    conversions = _count_conversions(monkeypatch)
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c", "site-d")

    bed.run()

    assert bed.source.reads == [(image.id, 0)]
    assert conversions == ["qcow2"]
    ended = {m.dest_site: bed.ledger.get(m.id) for m in members}
    for migration in ended.values():
        assert migration.state == "done", migration.last_error
        assert bed.states(migration.id) == HAPPY_PATH  # each its own trail, no note
        assert migration.source_sha512 == image.sha512
    assert bytes(bed.destination.record(ended[DESTINATION].dest_image_id).data) == RAW
    qcow2_c = bytes(site_c.record(ended["site-c"].dest_image_id).data)
    qcow2_d = bytes(site_d.record(ended["site-d"].dest_image_id).data)
    assert qcow2_c == qcow2_d and sha512(qcow2_c) == ended["site-c"].dest_sha512
    assert _raw_of_qcow2(qcow2_c, tmp_path)[: len(RAW)] == RAW
    assert not group_dir(bed.work_dir, str(members[0].group_id)).exists()
    shares = _shares(bed, members)
    assert sorted(shares) == [DESTINATION, "site-c", "site-d"]
    assert "removed" in shares.values() and set(shares.values()) <= {"removed", "released"}


def test_a_member_failing_for_good_does_not_fail_the_others(engine_bed: EngineBed) -> None:
    bed = engine_bed
    broken = bed.add_destination("site-c")
    bed.add_destination("site-d", wants_file=True)
    broken.fail("create_record", PermanentError("site-c refuses new images"), times=None)
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c", "site-d")

    bed.run()

    ended = {m.dest_site: bed.ledger.get(m.id) for m in members}
    assert ended["site-c"].state == "failed"
    assert "site-c refuses new images" in (ended["site-c"].last_error or "")
    assert ended[DESTINATION].state == ended["site-d"].state == "done"
    assert bed.states(ended[DESTINATION].id) == HAPPY_PATH
    assert bed.states(ended["site-c"].id)[-1] == ("uploading", "failed")
    assert bed.source.reads == [(image.id, 0)]
    # The member whose end committed last removed the group's files; the others let go.
    assert _shares(bed, members)[_ended_last(bed, members)] == "removed"
    assert not group_dir(bed.work_dir, str(members[0].group_id)).exists()


def test_the_shared_file_stays_while_a_member_is_active(engine_bed: EngineBed) -> None:
    bed = engine_bed
    slow = bed.add_destination("site-c")
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")
    staged = group_dir(bed.work_dir, str(members[0].group_id)) / "source.raw"
    seen: list[tuple[str, bool]] = []

    def once_site_b_has_ended() -> None:
        """site-c takes its payload only once site-b's member is done and cleaned up."""
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and _shares(bed, members).get(DESTINATION, "present") == "present"
        ):
            time.sleep(0.01)
        seen.append((bed.ledger.get(members[0].id).state, staged.exists()))

    slow.on_call("create_record", once_site_b_has_ended)
    bed.run()

    assert [bed.ledger.get(m.id).state for m in members] == ["done", "done"]
    assert seen == [("done", True)]
    assert _shares(bed, members) == {DESTINATION: "released", "site-c": "removed"}
    assert not staged.exists()
    assert bed.source.reads == [(image.id, 0)]


def test_a_member_resumed_after_a_crash_reuses_the_staged_file(engine_bed: EngineBed) -> None:
    bed = engine_bed
    bed.add_destination("site-c", wants_file=True)
    bed.destination.wants_file = True  # both stage (in exporting, where the crash is)
    bed.configure(concurrency=1)
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")
    dying = bed.supervisor_to_kill()
    bed.crash_at_transition(dying, Trigger.EXPORTED, before=True)
    bed.run(dying)
    crashed = next(m for m in members if bed.ledger.get(m.id).lease_owner == dying.owner)
    assert bed.ledger.get(crashed.id).state == "exporting"
    assert bed.source.reads == [(image.id, 0)]
    bed.expire_lease(crashed.id)

    bed.run(bed.supervisor("daemon-2"))

    for member in members:
        migration = bed.ledger.get(member.id)
        assert migration.state == "done", migration.last_error
    assert bed.source.reads == [(image.id, 0)]  # the staged file was found, not read again
    assert bed.notes(crashed.id) == [
        ("exporting", "taken over from daemon-dead after its lease expired")
    ]


def test_a_member_that_fails_while_its_sibling_ends_still_leaves_no_files(
    engine_bed: EngineBed,
) -> None:
    """A failing member cleans up before its end is committed. Held there while
    its sibling ends (and, seeing it still active, only lets go), it must remove
    the group's files once its own end is in."""
    bed = engine_bed
    broken = bed.add_destination("site-c")
    broken.fail("create_record", PermanentError("site-c refuses new images"))
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")

    def sibling_ended() -> bool:
        shares = bed.ledger.artifacts(members[0].id, status=None)
        return bed.ledger.get(members[0].id).state == "done" and all(
            a.status != "present" for a in shares if a.kind == SHARED
        )

    def until_the_sibling_has_ended() -> None:
        deadline = time.monotonic() + 10
        while not sibling_ended() and time.monotonic() < deadline:
            time.sleep(0.01)

    at_transition(bed.ledger, Trigger.FAIL, until_the_sibling_has_ended, before=True)
    bed.run()

    assert [bed.ledger.get(m.id).state for m in members] == ["done", "failed"]
    assert _ended_last(bed, members) == "site-c"
    assert not group_dir(bed.work_dir, str(members[0].group_id)).exists()


def test_a_member_retried_after_its_group_ended_reads_the_source_again(
    engine_bed: EngineBed,
) -> None:
    """The group's files went with its last member; a retry stages its own read."""
    bed = engine_bed
    broken = bed.add_destination("site-c")
    broken.fail("create_record", PermanentError("site-c refuses new images"))
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")
    bed.run()
    failed = bed.ledger.get(members[1].id)
    assert failed.state == "failed" and bed.ledger.get(members[0].id).state == "done"
    assert not group_dir(bed.work_dir, str(failed.group_id)).exists()

    operations.retry(bed.ledger, failed.id)
    bed.run()

    retried = bed.ledger.get(failed.id)
    assert retried.state == "done", retried.last_error
    assert bytes(broken.records[str(retried.dest_image_id)].data) == RAW
    assert bed.source.reads == [(image.id, 0), (image.id, 0)]
    shares = [a.status for a in bed.ledger.artifacts(failed.id, status=None) if a.kind == SHARED]
    assert len(shares) == 2 and shares[-1] == "removed"  # a share per run; alone at the end
    assert not group_dir(bed.work_dir, str(failed.group_id)).exists()


def test_a_member_whose_site_is_down_retries_from_the_staged_file(engine_bed: EngineBed) -> None:
    """Its siblings finish and let go; the file stays for it until it ends."""
    bed = engine_bed
    down = bed.add_destination("site-c")
    down.fail("create_record", TransientError("site-c: 503 Service Unavailable"), times=2)
    image = bed.source.add_image(RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")

    bed.run()

    late = bed.ledger.get(members[1].id)
    assert [bed.ledger.get(members[0].id).state, late.state] == ["done", "done"]
    assert bytes(down.records[str(late.dest_image_id)].data) == RAW
    assert [state for state, note in bed.notes(late.id) if "503" in note] == ["uploading"] * 2
    assert bed.source.reads == [(image.id, 0)]
    assert not group_dir(bed.work_dir, str(late.group_id)).exists()


def test_a_member_that_found_a_copy_and_ended_last_removes_the_group_files(
    engine_bed: EngineBed,
) -> None:
    """It never staged (its site had the image already), yet it was the last to end."""
    bed = engine_bed
    holder = bed.add_destination("site-c")
    image = bed.source.add_image(RAW)
    holder.add_copy(Provenance(image.id, SOURCE, image.sha512), RAW)
    members = _group(bed, image.id, DESTINATION, "site-c")

    def once_site_b_has_let_go() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _shares(bed, members).get(DESTINATION) != "released":
            time.sleep(0.01)

    holder.on_call("find_copy", once_site_b_has_let_go)
    bed.run()

    assert [bed.ledger.get(m.id).state for m in members] == ["done", "done"]
    assert bed.states(members[1].id)[-1] == ("exporting", "done")
    assert _shares(bed, members) == {DESTINATION: "released"}
    assert not group_dir(bed.work_dir, str(members[0].group_id)).exists()


def test_the_janitor_removes_the_files_of_groups_that_ended(engine_bed: EngineBed) -> None:
    """Files a kill left behind (the member ended, its cleanup never ran) go at
    the next sweep; a group with a member still queued keeps its files."""
    bed = engine_bed
    bed.add_destination("site-c")
    image = bed.source.add_image(RAW)
    ended = _group(bed, image.id, DESTINATION, "site-c")
    bed.run()
    assert [bed.ledger.get(m.id).state for m in ended] == ["done", "done"]
    waiting = _group(bed, bed.source.add_image(RAW).id, DESTINATION, "site-c")
    left_behind, in_use = (
        group_dir(bed.work_dir, str(members[0].group_id)) for members in (ended, waiting)
    )
    for directory in (left_behind, in_use):
        directory.mkdir(parents=True)
        (directory / "source.raw").write_bytes(RAW)

    bed.supervisor().sweep()

    assert not left_behind.exists()
    assert (in_use / "source.raw").read_bytes() == RAW
