"""Fan-out members that take the image as it is follow the group's one read of the
source as it is written (``migratio.group_read``): they receive it while it is
read, leave its check to that read, a stopped one holds back only itself, and a
writer that loses the source midway is taken over from where its spool ends."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator

import pytest

from migratio.checksums import Sha512Meter
from migratio.drivers.stub import StubSite
from migratio.errors import TransientError
from migratio.group_files import group_dir
from migratio.ledger.store import Migration
from tests.support.engine import DESTINATION, HAPPY_PATH, KIB, SOURCE, EngineBed, payload

RAW = payload(384 * KIB, seed=21)


def _group(bed: EngineBed, image_id: str, *destinations: str) -> dict[str, Migration]:
    members = bed.ledger.create_group(SOURCE, destinations, image_id, message="streaming test")
    return {m.dest_site: m for m in members}


def _held(stub: StubSite, migration: Migration) -> bytes:
    return bytes(stub.records[str(migration.dest_image_id)].data)


def test_a_follower_receives_the_image_while_the_source_is_read(engine_bed: EngineBed) -> None:
    """The source stops at 2.5 MiB until the follower has received 1.25 MiB: only
    a tee gets past it (a follower that waited for the staged file would stall).
    The safety guard holds a raw stream's first MiB for its verdict, then the last
    chunk read from the spool (up to 1 MiB): hence the sizes."""
    bed = engine_bed
    staging = bed.add_destination("site-c", wants_file=True)
    data = payload(3072 * KIB, seed=22)
    image = bed.source.add_image(data)
    release = bed.source.stall_at("read", 2560 * KIB, limit=5)
    received: list[int] = []

    def let_the_source_go_on() -> None:
        received.append(max(len(r.data) for r in bed.destination.records.values()))
        release.set()

    bed.destination.at_byte("receive", 1280 * KIB, let_the_source_go_on)
    members = _group(bed, image.id, DESTINATION, "site-c")

    bed.run()

    ended = {site: bed.ledger.get(m.id) for site, m in members.items()}
    for migration in ended.values():
        assert migration.state == "done", migration.last_error
        assert bed.states(migration.id) == HAPPY_PATH  # no retry: the stall was released
    assert received and received[0] >= 1280 * KIB
    assert _held(bed.destination, ended[DESTINATION]) == data
    assert _held(staging, ended["site-c"]) == data
    assert bed.source.reads == [(image.id, 0)]
    assert "streamed from the group's one read" in " ".join(bed.messages(members[DESTINATION].id))
    assert not group_dir(bed.work_dir, str(ended[DESTINATION].group_id)).exists()


def test_a_follower_leaves_the_check_to_the_groups_read(
    engine_bed: EngineBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool is checked against the source's sha512 once, by its writer: a
    follower does not hash it again, and a site that reports no sha512 of what it
    took (as Glance's upload does not) still ends with the source's recorded."""
    bed = engine_bed
    streaming = bed.add_destination("site-c", returns_sha512=False)
    bed.add_destination("site-d", wants_file=True)
    data = payload(2048 * KIB, seed=23)
    image = bed.source.add_image(data)
    hashed: list[str] = []
    verifying = Sha512Meter.verifying

    def spied(meter: Sha512Meter, chunks: Iterable[bytes], *args: str | None) -> Iterator[bytes]:
        hashed.append(str(args[-1]))
        return verifying(meter, chunks, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Sha512Meter, "verifying", spied)
    members = _group(bed, image.id, "site-c", "site-d")

    bed.run()

    follower = bed.ledger.get(members["site-c"].id)
    assert follower.state == "done", follower.last_error
    assert bed.states(follower.id) == HAPPY_PATH
    assert _held(streaming, follower) == data
    assert follower.dest_sha512 == hashlib.sha512(data).hexdigest()
    assert "streamed from the group's one read" in " ".join(bed.messages(follower.id))
    assert not [what for what in hashed if follower.id in what]


def test_a_stopped_destination_holds_back_only_itself(engine_bed: EngineBed) -> None:
    """site-c stops taking bytes at 64 KiB; site-b (following too) and site-d
    (staging) reach done meanwhile, reading the spool written at the source's pace;
    site-c then goes on from the spool: the source was read once."""
    bed = engine_bed
    stopped = bed.add_destination("site-c")
    staging = bed.add_destination("site-d", wants_file=True)
    image = bed.source.add_image(RAW)
    go_on = stopped.stall_at("receive", 64 * KIB, limit=8)
    members = _group(bed, image.id, DESTINATION, "site-c", "site-d")
    seen: dict[str, str] = {}

    def release_once_the_others_are_done() -> None:
        # site-c may still be in exporting when the others are done (its probe
        # follows the spool, and a busy machine can starve its thread): it is held
        # once it uploads, so wait for that too.
        deadline = time.monotonic() + 6
        others = (members[DESTINATION].id, members["site-d"].id)
        while time.monotonic() < deadline:
            held = bed.ledger.get(members["site-c"].id).state
            if held == "uploading" and all(bed.ledger.get(i).state == "done" for i in others):
                seen["site-c"] = held
                break
            time.sleep(0.01)
        go_on.set()

    watcher = threading.Thread(target=release_once_the_others_are_done, daemon=True)
    watcher.start()
    bed.run()
    watcher.join()

    assert seen == {"site-c": "uploading"}
    ended = {site: bed.ledger.get(m.id) for site, m in members.items()}
    for migration in ended.values():
        assert migration.state == "done", migration.last_error
        assert bed.states(migration.id) == HAPPY_PATH
    assert _held(bed.destination, ended[DESTINATION]) == RAW
    assert _held(stopped, ended["site-c"]) == RAW
    assert _held(staging, ended["site-d"]) == RAW
    assert bed.source.reads == [(image.id, 0)]


def test_a_writer_that_loses_the_source_is_taken_over_from_its_spool(
    engine_bed: EngineBed,
) -> None:
    """Two followers, no one staging: one writes the spool and loses the source at
    192 KiB; the other takes over from there (its read starts at 192 KiB); both
    land the whole image. The first retries unless the other's writing already
    moved the spool past the loss before it read there again (a race either way:
    at most one retry, never a second read from the start)."""
    bed = engine_bed
    other = bed.add_destination("site-c")
    image = bed.source.add_image(RAW)
    bed.source.raise_at("read", 192 * KIB, TransientError("site-a: connection reset"))
    members = _group(bed, image.id, DESTINATION, "site-c")

    bed.run()

    ended = {site: bed.ledger.get(m.id) for site, m in members.items()}
    for migration in ended.values():
        assert migration.state == "done", migration.last_error
    assert _held(bed.destination, ended[DESTINATION]) == RAW
    assert _held(other, ended["site-c"]) == RAW
    assert bed.source.reads == [(image.id, 0), (image.id, 192 * KIB)]
    retried = [
        site
        for site, m in ended.items()
        if any("connection reset" in note for _, note in bed.notes(m.id))
    ]
    assert len(retried) <= 1, retried
