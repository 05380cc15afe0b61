"""Which earlier version a new destination record starts from (``migratio/versions.py``),
through the engine on stub sites: the base named at submit or by the source's
``base_image_ref``, the manifest kept for the next version, and the full upload
(with its reason in the audit trail) when there is nothing to start from."""

from __future__ import annotations

from migratio.drivers.base import BASE_RECORD
from migratio.drivers.stub import StubImage
from tests.support.engine import DESTINATION, KIB, SOURCE, EngineBed, payload


def _version(bed: EngineBed, seed: int, base: str | None = None) -> StubImage:
    return bed.source.add_image(payload(64 * KIB, seed=seed), base_image_ref=base)


def _migrate(bed: EngineBed, image: StubImage, base: str | None = None) -> str:
    migration = bed.ledger.create(SOURCE, DESTINATION, image.id, base_image_id=base)
    bed.run()
    done = bed.ledger.get(migration.id)
    assert done.state == "done", done.last_error
    assert done.dest_image_id is not None
    return migration.id


def test_a_version_starts_from_the_previous_one_by_its_base_image_ref(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.destination.takes_base_version = True
    first = _version(bed, 1)
    first_migration = _migrate(bed, first)
    (first_record,) = bed.records_of(first_migration)
    second_migration = _migrate(bed, _version(bed, 2, base=first.id))
    (second_record,) = bed.records_of(second_migration)

    assert bed.destination.records[second_record].properties[BASE_RECORD] == first_record
    base = bed.destination.bases[second_record]
    assert base is not None
    assert (base.image_id, base.migration_id, base.record_id) == (
        first.id,
        first_migration,
        first_record,
    )
    assert base.result_id == bed.ledger.get(first_migration).dest_image_id
    assert bed.destination.bases[first_record] is None
    assert any(
        m.startswith(f"incremental: {second_record} starts from version {first.id}")
        for m in bed.messages(second_migration)
    )
    # Each finished record's manifest is kept, found by its record.
    for migration_id, record_id in (
        (first_migration, first_record),
        (second_migration, second_record),
    ):
        kept = bed.ledger.version_of_record(DESTINATION, record_id)
        assert kept is not None and kept.migration_id == migration_id and len(kept.manifest) == 32


def test_nothing_to_start_from_is_a_full_upload_with_its_reason_noted(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    bed.destination.takes_base_version = True
    never = _version(bed, 3)
    lonely = _migrate(bed, _version(bed, 4), base=never.id)
    assert (
        f"base version {never.id}: not migrated to {DESTINATION} (no block manifest in the "
        "ledger); sending all of it"
    ) in bed.messages(lonely)

    first = _version(bed, 5)
    first_migration = _migrate(bed, first)
    (first_record,) = bed.records_of(first_migration)
    bed.destination.remove(first_record)  # deleted at the site since
    orphan = _migrate(bed, _version(bed, 6, base=first.id))
    (record,) = bed.records_of(orphan)
    assert BASE_RECORD not in bed.destination.records[record].properties
    assert bed.destination.bases[record] is None
    assert (
        f"base version {first.id}: its record {first_record} at {DESTINATION} "
        f"(migration {first_migration}) is gone; sending all of it"
    ) in bed.messages(orphan)


def test_a_destination_without_versions_ignores_base_image_ref_and_notes_a_named_base(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    first = _version(bed, 7)
    _migrate(bed, first)
    quiet = _migrate(bed, _version(bed, 8, base=first.id))
    named = _migrate(bed, _version(bed, 9), base=first.id)
    assert not any("base version" in m for m in bed.messages(quiet))
    assert (
        f"base version {first.id}: {DESTINATION} cannot start from it; sending all of it"
    ) in bed.messages(named)
