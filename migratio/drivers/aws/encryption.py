"""Encrypted snapshots: what StartSnapshot and ImportSnapshot are asked, and
why an encrypted ebs-direct snapshot gets every block of the payload written.

A site with ``kms_key_id`` (or ``encrypted: true``, the account's default EBS
key) starts its snapshots encrypted. Unwritten blocks of an *unencrypted*
snapshot read as zeros, so ebs-direct sends only non-zero blocks. Unwritten
blocks of an *encrypted* snapshot do not: AWS's coldsnap team found they read
back as random data, and turned coldsnap's "omit zero blocks" off by default
for that reason (awslabs/coldsnap#395, #396). A guest may rely on zeros where
its image had a hole (a partition table's unused entries, a file system's
lazily initialised tables), so on an encrypted site every block of the payload
is written, zero blocks included. docs/aws-encryption.md has the sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from migratio.config import AwsSite
from migratio.drivers.aws.blocks import BLOCK_SIZE, Block
from migratio.drivers.aws.versions import ZERO_BLOCK_SHA256

ZERO_BLOCK = bytes(BLOCK_SIZE)


def start_snapshot_arguments(settings: AwsSite) -> dict[str, Any]:
    """StartSnapshot's encryption arguments (none for an unencrypted site)."""
    if not settings.encrypts:
        return {}
    if settings.kms_key_id:
        return {"Encrypted": True, "KmsKeyArn": settings.kms_key_id}
    return {"Encrypted": True}


def import_snapshot_arguments(settings: AwsSite) -> dict[str, Any]:
    """ImportSnapshot's encryption arguments (none for an unencrypted site)."""
    if not settings.encrypts:
        return {}
    if settings.kms_key_id:
        return {"Encrypted": True, "KmsKeyId": settings.kms_key_id}
    return {"Encrypted": True}


def with_zero_blocks(blocks: Iterable[Block], size: int) -> Iterator[Block]:
    """``blocks`` (non-zero, by increasing index) with an all-zero block in every
    gap, up to the payload's last block: what an encrypted snapshot must be sent."""
    following = 0
    for block in blocks:
        for index in range(following, block.index):
            yield Block(index, ZERO_BLOCK, ZERO_BLOCK_SHA256)
        yield block
        following = block.index + 1
    for index in range(following, -(-size // BLOCK_SIZE)):
        yield Block(index, ZERO_BLOCK, ZERO_BLOCK_SHA256)


def is_zero(block: Block) -> bool:
    return block.sha256 == ZERO_BLOCK_SHA256
