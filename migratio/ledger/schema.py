"""The schema revision this migratio needs, checked without Alembic or SQLAlchemy.

Read-only commands compare the ledger's revision with it; loading Alembic to
ask it for its head would cost a quarter of a second.
"""

from __future__ import annotations

from migratio.errors import LedgerUnavailable

# The newest revision in migrations_db/versions; tests/drivers/ledger/test_ledger.py
# checks it against Alembic's own head.
SCHEMA_HEAD = "0007"


def check_revision(current: str | None) -> None:
    """LedgerUnavailable unless ``current`` (the ledger's revision) is the newest."""
    if current != SCHEMA_HEAD:
        raise LedgerUnavailable(
            f"ledger schema is at revision {current or 'none'}, this migratio needs "
            f"{SCHEMA_HEAD}: run 'migratio db upgrade'"
        )
