"""``migratio status``'s read of the ledger, in plain SQL through the database's
own driver (sqlite3, psycopg), not SQLAlchemy.

Operators run ``status`` more than any other command, and it must answer at
once (issue 12: 0.30 s on SQLite, 0.40 s on PostgreSQL, 100,000 migrations);
importing SQLAlchemy alone takes about 0.2 s here. So this one read is plain
SQL: one read-only transaction (no write lock on SQLite, a single snapshot for
the rows and their count), the schema revision checked with one select, the
newest migrations through ``ix_migrations_created_at``, and the exact count of
those matching only when some were left out. It creates and changes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from migratio.errors import LedgerError, LedgerUnavailable
from migratio.ledger.schema import check_revision
from migratio.ledger.types import Migration, MigrationFilter, utcnow
from migratio.ledger.urls import (
    SQLITE_BUSY_TIMEOUT_MS,
    describe_url,
    libpq_url,
    parse_url,
    postgres_connect_args,
)
from migratio.machine import ACTIVE, State
from migratio.text import one_line

COLUMNS = tuple(Migration.__dataclass_fields__)
# How these columns come back from SQLite (text, 0/1); psycopg gives Python values.
_TIMES = frozenset(
    {"next_attempt_at", "lease_expires_at", "created_at", "updated_at", "finished_at"}
)
_JSON = frozenset({"source_image", "transfer_state"})
REASON_CHARS = 300

Mark = Callable[[str], str]  # a named parameter's placeholder in the driver's style


class Listing:
    """An open, read-only look at a ledger: ``newest`` as often as wanted, then ``close``."""

    def __init__(self, connection: Any, driver: Driver) -> None:
        self._connection = connection
        self._driver = driver

    @classmethod
    def open(cls, url: str) -> Listing:
        """The ledger at ``url``, which must exist at the newest schema revision.

        LedgerUnavailable names the ledger (without its password) and the reason.
        """
        opened = _open_sqlite(url) if parse_url(url).is_sqlite else _open_postgres(url)
        try:
            opened.check_schema()
        except opened._driver.errors as exc:
            opened.close()
            reason = one_line(exc, REASON_CHARS)
            where = describe_url(url)
            raise LedgerUnavailable(f"cannot open the ledger at {where}: {reason}") from None
        except LedgerUnavailable:
            opened.close()
            raise
        return opened

    def check_schema(self) -> None:
        """Alembic's own table read directly (no Alembic import); none: no schema yet."""
        with self._snapshot():
            rows = []
            if self._select(self._driver.version_table, {})[0][0]:
                rows = self._select("SELECT version_num FROM alembic_version", {})
        check_revision(str(rows[0][0]) if rows else None)

    def newest(self, wanted: MigrationFilter, limit: int | None) -> tuple[list[Migration], int]:
        """Those ``wanted``, newest first, at most ``limit`` (None: all), and how
        many match in all."""
        mark = self._driver.mark
        where, params = _where(wanted, mark)
        # Only column names and placeholders go into the SQL; every value is bound.
        columns = ", ".join(COLUMNS)
        listed = f"SELECT {columns} FROM migrations{where} ORDER BY created_at DESC"  # noqa: S608
        if limit is not None:
            listed += f" LIMIT {mark('limit')}"
            params["limit"] = limit
        try:
            with self._snapshot():
                rows = self._select(listed, params)
                if limit is None or len(rows) < limit:
                    total = len(rows)
                else:
                    counted = f"SELECT count(*) FROM migrations{where}"  # noqa: S608
                    total = int(self._select(counted, params)[0][0])
        except self._driver.errors as exc:
            raise self._typed(exc) from exc
        return [_migration(row) for row in rows], total

    def full_sites(self, slots: Mapping[str, int]) -> dict[str, int]:
        """Of the sites with a ``max_concurrent`` (``slots``), those with no free
        slot now, and how many migrations hold one (the rule of ledger/slots.py:
        every active state but queued, and a queued one whose claim holds a lease)."""
        if not slots:
            return {}
        mark = self._driver.mark
        params: dict[str, Any] = {f"site_{n}": site for n, site in enumerate(slots)}
        params |= {f"state_{n}": state.value for n, state in enumerate(ACTIVE)}
        sites = ", ".join(mark(name) for name in params if name.startswith("site_"))
        states = ", ".join(mark(name) for name in params if name.startswith("state_"))
        query = (
            "SELECT dest_site, state, lease_owner, lease_expires_at FROM migrations "  # noqa: S608
            f"WHERE dest_site IN ({sites}) AND state IN ({states})"
        )
        try:
            with self._snapshot():
                rows = self._select(query, params)
        except self._driver.errors as exc:
            raise self._typed(exc) from exc
        now = utcnow()
        running: Counter[str] = Counter()
        for site, state, owner, expires in rows:
            if isinstance(expires, str):
                expires = datetime.fromisoformat(expires)
            if state != State.QUEUED.value or (owner is not None and expires >= now):
                running[site] += 1
        return {site: count for site, count in running.items() if count >= slots[site]}

    def close(self) -> None:
        with suppress(self._driver.errors):  # a connection that is gone is closed
            self._connection.close()

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read-only transaction, ended (rolled back: nothing to keep) after the block."""
        self._driver.begin(self._connection)
        try:
            yield
        finally:
            self._connection.rollback()

    def _select(self, sql: str, params: dict[str, Any]) -> list[Any]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _typed(self, exc: Exception) -> LedgerError:
        reason = one_line(exc, REASON_CHARS)
        if isinstance(exc, self._driver.unreachable):
            return LedgerUnavailable(f"ledger unavailable: {reason}", reason)
        return LedgerError(f"ledger error: {reason}", reason)


@dataclass(frozen=True)
class Driver:
    """What differs between sqlite3 and psycopg here."""

    mark: Mark  # a named parameter's placeholder
    begin: Callable[[Any], None]  # starts a read-only transaction on a connection
    version_table: str  # a select of one row: true when alembic_version exists
    errors: type[Exception]  # the driver's base exception
    unreachable: tuple[type[Exception], ...]  # those meaning "cannot reach the ledger"


def _where(wanted: MigrationFilter, mark: Mark) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if wanted.states:
        names = [f"state_{n}" for n in range(len(wanted.states))]
        clauses.append(f"state IN ({', '.join(map(mark, names))})")
        params.update(zip(names, wanted.states, strict=True))
    if wanted.image_id is not None:
        clauses.append(f"image_id = {mark('image_id')}")
        params["image_id"] = wanted.image_id
    if wanted.job_id is not None:
        # The migration the job created, or one it joined (its jobs row).
        job = mark("job_id")
        clauses.append(
            f"(job_id = {job} OR id IN (SELECT migration_id FROM jobs WHERE job_id = {job}))"  # noqa: S608
        )
        params["job_id"] = wanted.job_id
    if wanted.site is not None:
        clauses.append(f"(source_site = {mark('site')} OR dest_site = {mark('site')})")
        params["site"] = wanted.site
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _migration(row: tuple[Any, ...]) -> Migration:
    values = dict(zip(COLUMNS, row, strict=True))
    for name in _TIMES:
        if isinstance(values[name], str):
            values[name] = datetime.fromisoformat(values[name])
    for name in _JSON:
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Migration(**values)


def _open_sqlite(url: str) -> Listing:
    import sqlite3

    database = parse_url(url).database or ":memory:"
    if database != ":memory:":
        path = Path(database)
        if not path.is_file():
            raise LedgerUnavailable(
                f"no ledger at {path}: start the daemon (migratio run) "
                "or run 'migratio db upgrade' first"
            )
        # mode=rw: never creates the file (read-only commands leave no ledger behind).
        database = f"file:{quote(str(path.absolute()))}?mode=rw"
    try:
        connection = sqlite3.connect(
            database,
            uri=database.startswith("file:"),
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions begun by _snapshot, not by sqlite3
        )
    except sqlite3.Error as exc:
        reason = one_line(exc, REASON_CHARS)
        where = describe_url(url)
        raise LedgerUnavailable(f"cannot open the ledger at {where}: {reason}") from None
    # sqlite3 would begin a transaction only before a write; a deferred BEGIN
    # gives the reads one snapshot and takes no write lock.
    driver = Driver(
        mark=lambda name: f":{name}",
        begin=lambda connection: connection.execute("BEGIN"),
        version_table="SELECT count(*) FROM sqlite_master "
        "WHERE type = 'table' AND name = 'alembic_version'",
        errors=sqlite3.Error,
        unreachable=(sqlite3.OperationalError,),
    )
    return Listing(connection, driver)


def _open_postgres(url: str) -> Listing:
    import psycopg

    try:
        connection = psycopg.connect(libpq_url(url), **postgres_connect_args(parse_url(url).query))
    except psycopg.Error as exc:
        reason = one_line(exc, REASON_CHARS)
        raise LedgerUnavailable(
            f"cannot open the ledger at {describe_url(url)}: {reason}"
        ) from None
    # One snapshot for the rows and their count; the server refuses any write.
    connection.read_only = True
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    driver = Driver(
        mark=lambda name: f"%({name})s",
        begin=lambda _connection: None,  # psycopg begins one before the first statement
        version_table="SELECT to_regclass('alembic_version') IS NOT NULL",
        errors=psycopg.Error,
        unreachable=(psycopg.OperationalError, psycopg.InterfaceError),
    )
    return Listing(connection, driver)
