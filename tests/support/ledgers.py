"""Fresh ledgers for tests and benchmarks, on SQLite or a real PostgreSQL."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import Engine, text

from migratio.ledger.database import make_engine, upgrade
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


def sqlite_engine(ledger_file: Path) -> Engine:
    """An engine on a test's SQLite ledger file."""
    return make_engine(f"sqlite:///{ledger_file}")


def fresh_sqlite_ledger(directory: Path, session_dir: Path) -> Path:
    """A SQLite ledger file at the newest schema in ``directory``: a copy of one
    upgraded template per session (``session_dir``), as Alembic takes ~70 ms per
    upgrade and a copy takes none."""
    template = session_dir / "ledger-template.sqlite"
    if not template.exists():
        building = template.with_suffix(".building")
        engine = make_engine(f"sqlite:///{building}")
        upgrade(engine)
        engine.dispose()
        with closing(sqlite3.connect(building)) as connection:  # fold the WAL in: one file
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        building.rename(template)
    ledger_file = directory / "ledger.sqlite"
    shutil.copyfile(template, ledger_file)
    return ledger_file
