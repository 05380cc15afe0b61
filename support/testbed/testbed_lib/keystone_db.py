"""A provisioned Keystone database per site, made once and then given each bed's
URLs and passwords by SQL.

Bootstrapping (``keystone-manage bootstrap`` imports all of Keystone: ~2.5 s of
CPU) and provisioning (openstacksdk calls that Keystone answers one by one) are
most of a Keystone's start; with a Keystone per site they would be paid twice.
What they create depends only on the package version and the site's name, apart
from the endpoint URLs (the bed's ports) and the password hashes, which are
rewritten in each copy before its Keystone starts. The cached copy holds no
bed's secret: its hashes are replaced by those of throwaway passwords before it
is stored.
"""

import os
import secrets
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path

import bcrypt

from . import sqlite
from .schema_cache import cache_dir, installed_version

# Bump when keystone._provision (or bootstrap's arguments) changes what exists.
RECIPE = 1
# keystone.conf's [identity] password_hash_rounds: bcrypt's minimum cost.
BCRYPT_ROUNDS = 4


def cached(site: str) -> Path:
    version = installed_version("python3-keystone")
    return cache_dir() / f"keystone-{version}-{site}-r{RECIPE}.sqlite"


def restore(site: str, target: Path, urls: Mapping[str, str], passwords: Mapping[str, str]) -> bool:
    """Put the site's cached database at ``target`` with these endpoint URLs (by
    service type) and passwords (by user name); False if there is none yet."""
    source = cached(site)
    if not source.is_file():
        return False
    _copy(source, target)
    sqlite.use_wal(target)
    _personalise(target, urls, passwords)
    return True


def store(site: str, database: Path, users: list[str]) -> None:
    """Keep a copy of a freshly provisioned ``database`` (its Keystone may be running:
    SQLite's backup is consistent), with throwaway passwords for ``users``."""
    path = cached(site)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _copy(database, partial)
        _personalise(partial, {}, {user: secrets.token_urlsafe(24) for user in users})
        partial.replace(path)  # atomic: a concurrent bed never sees half a file
    except (OSError, sqlite3.Error):
        partial.unlink(missing_ok=True)  # no cache, just slower next time


def _copy(source: Path, target: Path) -> None:
    """A consistent copy, also of a database in use (WAL pages included)."""
    with closing(sqlite3.connect(source)) as origin, closing(sqlite3.connect(target)) as copy:
        origin.backup(copy)


def _personalise(database: Path, urls: Mapping[str, str], passwords: Mapping[str, str]) -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        for service_type, url in urls.items():
            connection.execute(
                "UPDATE endpoint SET url = ? WHERE service_id IN"
                " (SELECT id FROM service WHERE type = ?)",
                (url, service_type),
            )
        for user, password in passwords.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
            connection.execute(
                "UPDATE password SET password_hash = ? WHERE local_user_id IN"
                " (SELECT id FROM local_user WHERE name = ? AND domain_id = 'default')",
                (hashed.decode(), user),
            )
