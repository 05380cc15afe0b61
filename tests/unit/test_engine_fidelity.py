"""What a copy carries besides its bytes, through the engine on stub sites:
Glance tags, the protected flag, img_* properties, and the image signature that
only survives when the bytes do (docs/image-fidelity.md)."""

from __future__ import annotations

import pytest

from migratio.drivers.base import MIGRATION_ID, SOURCE_CS, SOURCE_SHA512, SOURCE_T, SOURCE_UUID
from tests.support.engine import HAPPY_PATH, KIB, SOURCE, EngineBed, payload, qcow2_of

SIGNATURE = {
    "img_signature": "c2lnbmF0dXJl",
    "img_signature_hash_method": "SHA-256",
    "img_signature_key_type": "RSA-PSS",
    "img_signature_certificate_uuid": "f4b3e0c2-5d1a-4a7e-9a51-0e3a3c1b2d4f",
}
PROPERTIES = {
    "hw_firmware_type": "uefi",
    "hw_tpm_version": "2.0",
    "os_distro": "ubuntu",
    "img_config_drive": "mandatory",
    **SIGNATURE,
}
TAGS = ("golden", "ubuntu-24.04")


def _migrate(bed: EngineBed, data: bytes, disk_format: str) -> tuple[str, str]:
    image = bed.source.add_image(
        data,
        name="signed",
        disk_format=disk_format,
        architecture="aarch64",
        properties=dict(PROPERTIES),
        tags=TAGS,
        protected=True,
    )
    migration = bed.submit(image.id)
    bed.run()
    done = bed.ledger.get(migration.id)
    assert done.state == "done", done.last_error
    assert bed.states(migration.id) == HAPPY_PATH
    labels = {
        SOURCE_UUID: image.id,
        SOURCE_CS: SOURCE,
        SOURCE_T: SOURCE,
        SOURCE_SHA512: image.sha512,
        MIGRATION_ID: migration.id,
    }
    record = bed.destination.records[str(done.dest_image_id)]
    assert (record.tags, record.protected, record.architecture) == (TAGS, True, "aarch64")
    assert record.properties.items() >= labels.items()
    # Nothing but the source's properties and the labels.
    assert set(record.properties) <= set(PROPERTIES) | set(labels)
    return migration.id, str(done.dest_image_id)


def test_unconverted_bytes_keep_their_signature_tags_and_protection(
    engine_bed: EngineBed,
) -> None:
    bed = engine_bed
    migration_id, record_id = _migrate(bed, payload(64 * KIB), "raw")
    record = bed.destination.records[record_id]
    assert record.properties.items() >= PROPERTIES.items()
    assert "dropped" not in bed.messages(migration_id)[-1]


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return qcow2_of(payload(128 * KIB, seed=3), tmp_path_factory.mktemp("qcow2"))


def test_converted_bytes_drop_the_signature_with_a_note(
    engine_bed: EngineBed, qcow2: bytes
) -> None:
    bed = engine_bed
    bed.destination.required_disk_format = "raw"
    migration_id, record_id = _migrate(bed, qcow2, "qcow2")
    record = bed.destination.records[record_id]
    kept = {k: v for k, v in PROPERTIES.items() if k not in SIGNATURE}
    assert record.properties.items() >= kept.items()
    assert not set(SIGNATURE) & set(record.properties)
    assert bed.messages(migration_id)[-1].endswith(
        "sha512 verified; dropped img_signature, img_signature_certificate_uuid, "
        "img_signature_hash_method, img_signature_key_type: they sign the source's "
        "qcow2 bytes, converted to raw"
    )
