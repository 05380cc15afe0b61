"""Leases: a daemon that lost its lease stops the step and writes nothing more;
the heartbeat keeps a lease alive while a step runs and notices when it is taken;
daemons sharing a ledger never share a migration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.support.engine import HAPPY_PATH, KIB, MIB, EngineBed, payload

BIG = payload(2 * MIB, seed=6)  # past the safety guard's 1 MiB head


@pytest.mark.parametrize(
    ("where", "told"),
    [("receive", True), ("receive", False), ("register", False)],
    ids=["mid-transfer-told", "mid-transfer-fenced", "before-the-transition"],
)
def test_a_daemon_that_lost_its_lease_stops_and_writes_nothing_more(
    engine_bed: EngineBed, where: str, told: bool
) -> None:
    """told: the heartbeat reports the loss (``signals.lost``) and the step stops
    at its next checkpoint; otherwise another daemon took the lease in the ledger
    and the next write (progress, a transition) is refused."""
    bed = engine_bed
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    supervisor = bed.supervisor("daemon-1")
    stolen: dict[str, object] = {}

    def steal() -> None:
        if told:
            supervisor.signals.lost.add(migration_id)
        else:
            bed.steal_lease(migration_id, "daemon-2")
        stolen["row"] = bed.ledger.get(migration_id)
        stolen["history"] = bed.ledger.history(migration_id)
        stolen["artifacts"] = bed.ledger.artifacts(migration_id, status=None)

    if where == "receive":
        bed.destination.at_byte("receive", 512 * KIB, steal)
    else:
        bed.destination.on_call("register", steal)

    bed.run(supervisor, until=lambda: "row" in stolen and bed.source.open_streams == 0)

    assert bed.ledger.get(migration_id) == stolen["row"]  # not a field changed since
    assert bed.ledger.history(migration_id) == stolen["history"]
    assert len(bed.records_of(migration_id)) == 1  # left to the new holder: not removed
    assert "remove" not in bed.destination.calls
    assert migration_id not in supervisor.signals.lost  # forgotten once the step ended
    if where == "receive":
        assert bed.ledger.artifacts(migration_id, status=None) == stolen["artifacts"]


def test_a_daemon_that_lost_its_lease_in_registering_does_not_settle_the_record(
    engine_bed: EngineBed,
) -> None:
    """Settling the record "kept" is the new holder's decision: it may still fail
    or cancel the migration, and cleanup skips what is kept."""
    bed = engine_bed
    migration_id = bed.submit(bed.source.add_image(BIG).id).id
    bed.destination.on_call("register", lambda: bed.steal_lease(migration_id, "daemon-2"))

    bed.run(until=lambda: bed.destination.count("register") == 1)

    assert [a[2] for a in bed.artifacts(migration_id)] == ["present"]


def test_the_heartbeat_renews_a_running_lease_and_notices_when_it_is_taken(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.configure(lease_seconds=0.6)  # renewed every 0.2 s (below the config's floor: no wait)
    image = bed.source.add_image(BIG)
    migration_id = bed.submit(image.id).id
    supervisor = bed.supervisor("daemon-1")
    seen: dict[str, bool] = {}

    def wait_for(condition: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 3
        while not check() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen[condition] = check()

    def hold_the_transfer() -> None:
        claimed = bed.ledger.get(migration_id).lease_expires_at
        assert claimed is not None
        wait_for(
            "renewed", lambda: (bed.ledger.get(migration_id).lease_expires_at or claimed) > claimed
        )
        bed.steal_lease(migration_id, "daemon-2")
        wait_for("noticed", lambda: migration_id in supervisor.signals.lost)

    bed.destination.at_byte("receive", 512 * KIB, hold_the_transfer)

    bed.run(supervisor, until=lambda: "noticed" in seen and bed.source.open_streams == 0)

    assert seen == {"renewed": True, "noticed": True}
    left = bed.ledger.get(migration_id)
    assert (left.state, left.lease_owner) == ("uploading", "daemon-2")
    assert bed.ledger.history(migration_id)[-1].to_state == "uploading"


def test_daemons_sharing_a_ledger_never_run_the_same_migration(engine_bed: EngineBed) -> None:
    bed = engine_bed
    images = [bed.source.add_image(payload(64 * KIB, seed=seed)) for seed in range(6)]
    migrations = [bed.submit(image.id).id for image in images]
    daemons = [bed.supervisor(f"daemon-{n}") for n in (1, 2)]

    runs = [threading.Thread(target=bed.run, args=(daemon,)) for daemon in daemons]
    for run in runs:
        run.start()
    for run in runs:
        run.join()

    for migration_id, image in zip(migrations, images, strict=True):
        assert bed.states(migration_id) == HAPPY_PATH  # no take-over, no retry
        (record_id,) = bed.records_of(migration_id)
        assert bytes(bed.destination.records[record_id].data) == image.data
    assert bed.destination.count("create_record") == len(images)
    assert len(bed.sites.opened) == 2 * len(images)  # each migration opened by one daemon
