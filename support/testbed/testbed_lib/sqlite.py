"""SQLite settings the OpenStack services need on a loopback bed."""

import sqlite3
from contextlib import closing
from pathlib import Path


def use_wal(database: Path) -> None:
    """Switch ``database`` to write-ahead logging (a persistent setting of the file).

    In the default rollback-journal mode a reader blocks a writer, and Glance or
    Keystone answer concurrent requests with "database is locked" (HTTP 500).
    """
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("pragma journal_mode=wal")
