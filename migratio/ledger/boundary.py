"""Where SQLAlchemy's exceptions become migratio's typed ledger errors.

Everything outside ``migratio/ledger`` decides by type (wait for the ledger,
record the jobs again, give up) and never imports SQLAlchemy to do so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from migratio import metrics
from migratio.errors import LedgerError, LedgerUnavailable
from migratio.text import one_line

# Database messages can be long (a statement and its parameters); a log line is not.
REASON_CHARS = 300


@contextmanager
def translated(conflict: type[LedgerError] = LedgerError) -> Iterator[None]:
    """Raise ``LedgerUnavailable`` for a ledger that cannot be reached, ``conflict``
    for a constraint a concurrent writer made us break, ``LedgerError`` otherwise."""
    try:
        yield
    except SQLAlchemyError as exc:
        error = _typed(exc, conflict)
        metrics.ledger_error(error)
        raise error from exc


def _typed(exc: SQLAlchemyError, conflict: type[LedgerError]) -> LedgerError:
    reason = one_line(getattr(exc, "orig", None) or exc, REASON_CHARS)
    if _unreachable(exc):
        return LedgerUnavailable(f"ledger unavailable: {reason}", reason)
    if isinstance(exc, IntegrityError):
        return conflict(f"ledger error: {reason}", reason)
    return LedgerError(f"ledger error: {reason}", reason)


@contextmanager
def transaction(engine: Engine, conflict: type[LedgerError] = LedgerError) -> Iterator[Connection]:
    """One ledger transaction in Core: committed at the end, rolled back on any error."""
    with translated(conflict), engine.begin() as connection:
        yield connection


@contextmanager
def orm_transaction(
    sessions: sessionmaker[Session], conflict: type[LedgerError] = LedgerError
) -> Iterator[Session]:
    """One ledger transaction with the ORM, for the writes that build rows as
    objects (new migrations, intake jobs): the rest stay in Core, which costs
    a fraction of the CPU."""
    with translated(conflict), sessions.begin() as session:
        yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A transaction that only reads: on SQLite it takes no write lock."""
    from migratio.ledger.database import READ_ONLY

    with translated(), engine.connect() as connection:
        marks = connection.connection.info  # seen by the SQLite dialect's BEGIN
        marks[READ_ONLY] = True
        try:
            with connection.begin():
                yield connection
        finally:
            del marks[READ_ONLY]


def _unreachable(exc: SQLAlchemyError) -> bool:
    # A disconnect can surface as any DBAPI error once the pool notices it.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError)
