"""Ledger URLs and connection settings, without SQLAlchemy.

The config's validation and ``migratio status`` need them, and neither should
pay for importing SQLAlchemy (about 0.2 s, most of the status budget of issue
12); the daemon's engine (``database.py``) uses the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

# Several daemon threads and the CLI write the same SQLite file: wait for the lock
# rather than failing at once.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL: how long to wait for a connection (libpq's connect_timeout, s), for
# any one statement (statement_timeout, ms: a lease must not wait behind a hung
# query), and for sent data to be acknowledged (tcp_user_timeout, ms); keepalives
# find a server that vanished while we wait for an answer. A parameter the URL
# sets itself (``?connect_timeout=5``, ``?options=-c statement_timeout=30000``) wins.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 10,
    "tcp_user_timeout": 30_000,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
POSTGRES_STATEMENT_TIMEOUT_MS = 60_000

# SQLAlchemy's own URL grammar (sqlalchemy.engine.url._parse_url, 2.x), so a URL
# means the same here as to the engine.
_URL = re.compile(
    r"""
    (?P<name>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X,
)
# SQLAlchemy's PostgreSQL default driver is psycopg2, which migratio does not
# install; the common spellings of a PostgreSQL URL all mean psycopg 3.
_POSTGRES_SCHEMES = ("postgres://", "postgresql://", "postgresql+psycopg2://")
_SUPPORTED = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


@dataclass(frozen=True)
class LedgerUrl:
    """The parts of a ledger URL that say where the ledger is."""

    driver: str
    database: str | None
    query: dict[str, str]

    @property
    def is_sqlite(self) -> bool:
        return self.driver.startswith("sqlite")


def parse_url(value: str) -> LedgerUrl:
    """The URL's parts, or ValueError (what SQLAlchemy cannot parse either)."""
    match = _URL.match(value)
    if match is None:
        raise ValueError(
            "is not a database URL (sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        )
    port = match["port"]
    if port and not port.isdigit():
        raise ValueError(f"port {port!r} is not a number")
    database = match["database"]
    query = dict(parse_qsl(match["query"] or ""))
    return LedgerUrl(match["name"], None if database is None else unquote(database), query)


def supported_url(value: str) -> str:
    """A database URL the ledger can use (SQLite or PostgreSQL), or ValueError."""
    for scheme in _POSTGRES_SCHEMES:
        if value.startswith(scheme):
            value = "postgresql+psycopg://" + value[len(scheme) :]
    driver = parse_url(value).driver
    if driver not in _SUPPORTED:
        raise ValueError(
            f"database {driver!r} is not supported: use sqlite:///PATH "
            "or postgresql+psycopg://USER@HOST/DB"
        )
    return value


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    match = _URL.match(url)
    if match is None or match["password"] is None:
        return url
    return url[: match.start("password")] + "***" + url[match.end("password") :]


def libpq_url(url: str) -> str:
    """A ``postgresql+psycopg://`` URL as libpq reads it (``postgresql://``)."""
    return "postgresql://" + url.split("://", 1)[1]


def postgres_connect_args(query: dict[str, Any]) -> dict[str, Any]:
    """The timeouts (``POSTGRES_CONNECT_ARGS``) the URL's own ``query`` leaves unset."""
    args = {key: value for key, value in POSTGRES_CONNECT_ARGS.items() if key not in query}
    options = query.get("options") or ""
    if isinstance(options, tuple):
        options = " ".join(options)
    if "statement_timeout" not in options:
        # connect_args replace the URL's own options: keep them, add ours.
        args["options"] = f"{options} -c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}".strip()
    return args
