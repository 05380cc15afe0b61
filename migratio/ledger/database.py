"""Engine set-up and schema upgrades for the ledger (SQLite embedded, PostgreSQL shared)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from migratio.errors import LedgerUnavailable
from migratio.ledger.schema import SCHEMA_HEAD, check_revision
from migratio.ledger.urls import SQLITE_BUSY_TIMEOUT_MS, describe_url, postgres_connect_args
from migratio.text import one_line

log = logging.getLogger(__name__)

# The execution option that marks a transaction as only reading.
READ_ONLY = "migratio_read_only"


def open_engine(url: str, *, migrate: bool) -> Engine:
    """An engine on a ledger at the newest schema: brought there (``migrate``), or
    found there (read-only commands must not change or create a ledger).

    LedgerUnavailable names the ledger (without its password) and the reason.
    """
    engine = make_engine(url, create=migrate)
    try:
        if migrate:
            upgrade(engine)
        else:
            check_current(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = one_line(getattr(exc, "orig", None) or exc, 300)
        where = describe_url(url)
        raise LedgerUnavailable(f"cannot open the ledger at {where}: {reason}") from None
    except LedgerUnavailable:
        engine.dispose()
        raise
    return engine


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for the ledger; SQLite gets WAL and write-locking transactions.

    ``create`` False: a SQLite ledger must exist already (read-only commands
    must not leave an empty ledger behind a typo in ``work_dir``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if not create and not path.is_file():
                raise LedgerUnavailable(
                    f"no ledger at {path}: start the daemon (migratio run) "
                    "or run 'migratio db upgrade' first"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args=postgres_connect_args(dict(parsed.query)),
    )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN; take control so every
        # transaction starts with BEGIN IMMEDIATE. A deferred transaction that later
        # writes can fail with "database is locked" without waiting for busy_timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    # A dialect hook, not a "begin" event: with any connection event, SQLAlchemy
    # puts every statement through its event dispatch (a third of the CPU of a
    # short transaction).
    engine.dialect.do_begin = _begin  # type: ignore[method-assign]


def _begin(dbapi_connection: Any) -> None:
    """BEGIN IMMEDIATE, or BEGIN for a read (marked by ``boundary.reading``): a read
    takes no write lock, so `status` must not wait for (or hold up) a daemon.
    Straight to sqlite3: a statement through SQLAlchemy costs several times as much."""
    reading = dbapi_connection.info.get(READ_ONLY, False)
    dbapi_connection.driver_connection.execute("BEGIN" if reading else "BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config  # Alembic is needed only to change the schema

    script_location = resources.files("migrations_db")
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["engine"] = engine
    return config


# Any constant shared by every migratio process: the advisory lock's key.
_UPGRADE_LOCK_KEY = 0x6D696772  # "migr"


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (safe to run on every start).

    Daemons starting together on one PostgreSQL ledger would race to create the
    same tables; an advisory lock makes them take turns. SQLite serialises them
    with its write lock already.

    A ledger already at the newest revision is left alone without loading
    Alembic: it would stay in the daemon's memory (~10 MiB of RSS) for nothing.
    """
    if current_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command

    config = alembic_config(engine)
    if engine.dialect.name != "postgresql":
        command.upgrade(config, "head")
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
        connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _UPGRADE_LOCK_KEY})
            connection.commit()


def head_revision(engine: Engine) -> str | None:
    """The newest schema revision this migratio knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def check_current(engine: Engine) -> None:
    """LedgerUnavailable unless the schema is at the newest revision (nothing is changed)."""
    check_revision(current_revision(engine))


def current_revision(engine: Engine) -> str | None:
    """The revision Alembic recorded in the ledger (None: none yet), read directly:
    read-only commands must not pay for loading Alembic."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        revision = connection.scalar(text("SELECT version_num FROM alembic_version"))
        return None if revision is None else str(revision)


@dataclass(frozen=True)
class SchemaState:
    """Where a ledger's schema stands against this migratio's revisions.

    current: the ledger's revision (None: no schema yet). head: the newest this
    migratio knows. known: whether ``current`` is one of this migratio's revisions
    (False: a newer migratio wrote it).
    """

    current: str | None
    head: str | None
    known: bool

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def schema_state(url: str, timeout: float) -> SchemaState | None:
    """Look at a ledger's schema without creating, changing or locking it (for
    ``migratio doctor``): a plain engine, not ``make_engine``, whose SQLite
    connections start every transaction with BEGIN IMMEDIATE, a write lock.
    None: a SQLite ledger whose file does not exist (yet).

    LedgerUnavailable names the ledger (without its password) and the reason.
    """
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    parsed = make_url(url)
    where = describe_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            return None
        engine = create_engine(url, connect_args={"timeout": timeout}, poolclass=NullPool)
    else:
        engine = create_engine(
            url, connect_args={"connect_timeout": max(1, int(timeout))}, poolclass=NullPool
        )
    try:
        current = current_revision(engine)
        scripts = ScriptDirectory.from_config(alembic_config(engine))
        try:
            known = current is None or scripts.get_revision(current) is not None
        except (RevisionError, CommandError):  # alembic wraps the one in the other
            known = False
        return SchemaState(current, scripts.get_current_head(), known)
    except SQLAlchemyError as exc:
        reason = one_line(getattr(exc, "orig", None) or exc, 300)
        raise LedgerUnavailable(f"cannot read the ledger at {where}: {reason}") from None
    finally:
        engine.dispose()
