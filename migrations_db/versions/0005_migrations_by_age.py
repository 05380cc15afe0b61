"""An index on migrations.created_at: `status` lists the newest first.

Without it, the newest 50 of 100,000 migrations meant sorting all of them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_migrations_created_at", "migrations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_migrations_created_at", "migrations")
