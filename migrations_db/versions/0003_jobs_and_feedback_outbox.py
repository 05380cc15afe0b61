"""Redis intake and feedback: the jobs a migration came from, and the feedback outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column(
            "migration_id",
            sa.String(36),
            sa.ForeignKey("migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_jobs_migration_id", "jobs", ["migration_id"])
    op.create_table(
        "feedback_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("migration_id", sa.String(36), nullable=True),
        sa.Column("jid", sa.String(24), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("worker_class", sa.String(255), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("delivered_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_feedback_outbox_pending", "feedback_outbox", ["delivered_at", "id"])


def downgrade() -> None:
    op.drop_table("feedback_outbox")
    op.drop_table("jobs")
