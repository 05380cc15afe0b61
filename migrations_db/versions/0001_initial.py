"""Initial ledger: migrations, transitions (audit), artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("source_site", sa.String(64), nullable=False),
        sa.Column("dest_site", sa.String(64), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_total", sa.BigInteger, nullable=True),
        sa.Column("source_md5", sa.String(32), nullable=True),
        sa.Column("source_sha512", sa.String(128), nullable=True),
        sa.Column("payload_sha512", sa.String(128), nullable=True),
        sa.Column("dest_sha512", sa.String(128), nullable=True),
        sa.Column("dest_image_id", sa.String(255), nullable=True),
        sa.Column("source_image", sa.JSON, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_migrations_state", "migrations", ["state"])
    op.create_index("ix_migrations_due", "migrations", ["state", "next_attempt_at"])
    op.create_index("ix_migrations_image", "migrations", ["image_id", "dest_site"])
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "migration_id",
            sa.String(36),
            sa.ForeignKey("migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_transitions_migration_id", "transitions", ["migration_id"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "migration_id",
            sa.String(36),
            sa.ForeignKey("migrations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("site", sa.String(64), nullable=True),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("settled_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_artifacts_migration_id", "artifacts", ["migration_id"])


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("transitions")
    op.drop_table("migrations")
