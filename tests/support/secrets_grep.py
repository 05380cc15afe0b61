"""The secrets grep (reliability row R6): every secret the test bed and the tests
made, looked for in everything migratio wrote.

Secrets come from where the bed keeps them (clouds.yaml, Glance's service
password, the AWS credentials file, the SSH client key), from tests that made
their own (``remember``: a Redis ``requirepass``, a token) and from one shape: a
Keystone Fernet token (``gAAAAA...``) is a secret wherever it appears, whoever
issued it, so tokens the daemons got during the run are found without being
listed. Places are files (ledgers, logs, dumps of Redis, sampled argv of the
daemons' children), Redis keys and values, and the rows of a SQL ledger.
A hit names the secret and the place, never the value.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import MetaData, select

# A Keystone Fernet token: version byte 0x80 base64url-encoded, then the payload.
FERNET_TOKEN = re.compile(rb"gAAAAA[A-Za-z0-9_=-]{20,}")
# Shorter values would match by chance (a 4-letter password in a sha512).
MIN_SECRET_LENGTH = 8
# Files worth reading: what a daemon writes (logs, ledgers, dumps), not images.
TEXT_SUFFIXES = frozenset(
    {".log", ".txt", ".jsonl", ".json", ".sqlite", ".sqlite-wal", ".db", ".out", ".err"}
)
_remembered: dict[str, str] = {}


def remember(name: str, value: str) -> None:
    """Add a secret a test made (a Redis password, a token it was issued)."""
    if len(value) >= MIN_SECRET_LENGTH:
        _remembered[name] = value


def remembered() -> dict[str, str]:
    return dict(_remembered)


@dataclass(frozen=True)
class Hit:
    secret: str  # its name, e.g. "clouds.yaml site-a password"
    place: str


@dataclass
class Scan:
    """What a grep looked at and found."""

    secrets: Mapping[str, bytes]
    hits: list[Hit] = field(default_factory=list)
    places: int = 0
    bytes_scanned: int = 0

    def text(self, place: str, data: bytes) -> None:
        """Look for every secret (and the token shape) in ``data``, read from ``place``."""
        self.places += 1
        self.bytes_scanned += len(data)
        for name, secret in self.secrets.items():
            if secret in data:
                self.hits.append(Hit(name, place))
        for match in FERNET_TOKEN.finditer(data):
            self.hits.append(Hit(f"a Keystone token ({match.group()[:8].decode()}...)", place))

    def files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError:  # removed while we looked (a test's own clean-up)
                continue
            self.text(str(path), data)

    def redis(self, client: Any, label: str) -> None:
        """Every key and every value of every type, from a ``redis.Redis`` client."""
        for key in client.scan_iter(count=1000):
            self.text(f"{label} key", bytes(key))
            kind = client.type(key)
            if kind == b"string":
                values: list[bytes] = [client.get(key) or b""]
            elif kind == b"list":
                values = list(client.lrange(key, 0, -1))
            elif kind == b"hash":
                values = [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            else:
                values = []
            self.text(f"{label} {key.decode(errors='replace')}", b"\n".join(values))

    def sql(self, connection: Any, label: str) -> None:
        """Every row of every table of the ledger behind a SQLAlchemy ``connection``."""
        tables = MetaData()
        tables.reflect(bind=connection)
        for table in tables.sorted_tables:
            rows = connection.execute(select(table)).fetchall()
            self.text(f"{label} table {table.name}", "\n".join(map(repr, rows)).encode())


def bed_secrets(bed_dir: Path) -> dict[str, bytes]:
    """Every secret the test bed in ``bed_dir`` made, by name."""
    found: dict[str, str] = {}
    # migratio's member accounts, and each cloud operator's admin.
    for name in ("clouds.yaml", "admin-clouds.yaml"):
        if not (bed_dir / name).exists():
            continue
        clouds = yaml.safe_load((bed_dir / name).read_text(encoding="utf-8"))
        for cloud, entry in clouds.get("clouds", {}).items():
            found[f"{name} {cloud} password"] = str(entry["auth"]["password"])
    for glance_conf in sorted(bed_dir.glob("glance-*/glance-api.conf")):
        parser = configparser.RawConfigParser(strict=False)
        parser.read(glance_conf)
        if parser.has_option("keystone_authtoken", "password"):
            found[f"{glance_conf.parent.name} service password"] = parser.get(
                "keystone_authtoken", "password"
            )
    credentials = bed_dir / "aws" / "credentials"
    if credentials.exists():
        parser = configparser.RawConfigParser()
        parser.read(credentials)
        for section in parser.sections():
            for option in ("aws_access_key_id", "aws_secret_access_key"):
                if parser.has_option(section, option):
                    found[f"AWS {option}"] = parser.get(section, option)
    for key_file in sorted((bed_dir / "sshd").glob("*_key")):
        found.update(private_key_lines(key_file))
    # Keystone's own keys: whoever holds one can mint tokens or read credentials.
    for key_file in sorted(bed_dir.glob("keystone-*/*-keys/*")):
        repository = f"{key_file.parent.parent.name} {key_file.parent.name}"
        found[f"{repository}/{key_file.name}"] = key_file.read_text().strip()
    return {
        name: value.encode() for name, value in found.items() if len(value) >= MIN_SECRET_LENGTH
    }


def private_key_lines(key_file: Path) -> dict[str, str]:
    """The base64 body lines of a PEM/OpenSSH private key: any one of them leaking
    is key material leaking."""
    lines = [
        line.strip()
        for line in key_file.read_text(encoding="ascii").splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    return {f"{key_file.name} line {number}": line for number, line in enumerate(lines, 1)}


def text_files(root: Path, *, skip: Iterable[Path] = ()) -> Iterator[Path]:
    """Files under ``root`` a daemon may have written text into, outside ``skip``."""
    skipped = [path.resolve() for path in skip]
    for path in sorted(root.rglob("*")):
        if path.suffix not in TEXT_SUFFIXES or not path.is_file() or path.is_symlink():
            continue
        resolved = path.resolve()
        if any(resolved.is_relative_to(other) for other in skipped):
            continue
        yield path


def after_the_run(
    bed_dir: Path,
    basetemp: Path,
    *,
    redis_url: str,
    postgres_url: str | None,
    extra_secrets: Mapping[str, str] | None = None,
) -> Scan:
    """The session's grep: the bed's and the tests' secrets, in every text file
    the run's daemons and commands wrote (under ``basetemp`` and the bed's work
    dir, not the bed's own config and peers' logs), the bed's Redis and the
    PostgreSQL ledger the tests shared."""
    import redis
    from sqlalchemy import create_engine

    known = bed_secrets(bed_dir) | {
        name: value.encode()
        for name, value in {**remembered(), **(extra_secrets or {})}.items()
        if len(value) >= MIN_SECRET_LENGTH
    }
    scan = Scan(known)
    scan.files(text_files(basetemp, skip=[bed_dir]))
    scan.files(text_files(bed_dir / "work"))
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        scan.redis(client, "the bed's Redis")
    finally:
        client.close()
    if postgres_url:
        engine = create_engine(postgres_url)
        if password := engine.url.password:
            scan.secrets = {**scan.secrets, "the PostgreSQL password": str(password).encode()}
        try:
            with engine.connect() as connection:
                scan.sql(connection, "the PostgreSQL ledger")
        finally:
            engine.dispose()
    return scan


def summary(scan: Scan) -> str:
    lines = [
        f"{len(scan.hits)} secret(s) found in {scan.places} places ({scan.bytes_scanned} bytes):"
    ]
    lines += [f"  {hit.secret} in {hit.place}" for hit in scan.hits[:50]]
    return "\n".join(lines)
