"""Artifacts that could not be removed yet: why, how often tried, and when next.

A leftover that resists removal (a destination that is down, a read-only work
dir) keeps its reason and is retried on a backoff schedule instead of at once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("last_error", sa.Text, nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("attempts")
        batch.drop_column("last_error")
