"""Incremental versions: a migration's named base version, and each migrated
version's block manifest (what its EBS snapshot holds, packed: 36 bytes a block).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("migrations") as batch:
        batch.add_column(sa.Column("base_image_id", sa.String(255), nullable=True))
    op.create_table(
        "block_manifests",
        sa.Column(
            "migration_id",
            sa.String(36),
            sa.ForeignKey("migrations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("dest_site", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(255), nullable=False),
        sa.Column("manifest", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_block_manifests_record", "block_manifests", ["dest_site", "record_id"])


def downgrade() -> None:
    op.drop_index("ix_block_manifests_record", "block_manifests")
    op.drop_table("block_manifests")
    with op.batch_alter_table("migrations") as batch:
        batch.drop_column("base_image_id")
