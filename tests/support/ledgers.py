"""Fresh ledgers for tests and benchmarks, on SQLite or a real PostgreSQL."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

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


def worker_database(url: str, worker: str) -> str:
    """``url`` for the main test process; for pytest-xdist worker ``worker`` (e.g.
    ``gw1``), a database of its own on the same server, made if missing, as each
    worker drops the ledger tables of its tests."""
    if not worker:
        return url
    base = make_url(url)
    name = f"{base.database}_{worker}"
    server = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        server.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


# The first test engine's dialect and statement cache, lent to every later one.
_shared: list[tuple[Any, Any]] = []


def sqlite_engine(ledger_file: Path) -> Engine:
    """An engine on a test's SQLite ledger file.

    SQLAlchemy caches compiled statements per engine, keyed by its dialect: a
    fresh engine per test compiled every statement of the ledger again (~25 per
    engine test, ~10 % of tests/unit's CPU). All test engines share one dialect
    and one cache, as a daemon's one engine does over its life.
    """
    engine = make_engine(f"sqlite:///{ledger_file}")
    if not _shared:
        _shared.append((engine.dialect, engine._compiled_cache))
    else:
        engine.dialect, engine._compiled_cache = _shared[0]
    return engine


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
