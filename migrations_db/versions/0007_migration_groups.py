"""A group id on migrations: the migrations of one fan-out submit share one read.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("migrations") as batch:
        batch.add_column(sa.Column("group_id", sa.String(36), nullable=True))
    op.create_index("ix_migrations_group", "migrations", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_migrations_group", "migrations")
    with op.batch_alter_table("migrations") as batch:
        batch.drop_column("group_id")
