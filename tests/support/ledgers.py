"""Fresh ledgers for tests and benchmarks, on SQLite or a real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Engine, text

from migratio.ledger.database import make_engine
from migratio.ledger.models import Base


def empty_ledger_engine(url: str) -> Engine:
    """An engine on ``url`` whose ledger tables are gone (a PostgreSQL database is
    shared by the tests of a session), ready for ``upgrade``."""
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            Base.metadata.drop_all(connection)
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    return engine
