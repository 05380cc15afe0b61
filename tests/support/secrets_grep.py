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
    clouds = yaml.safe_load((bed_dir / "clouds.yaml").read_text(encoding="utf-8"))
    for cloud, entry in clouds.get("clouds", {}).items():
        found[f"clouds.yaml {cloud} password"] = str(entry["auth"]["password"])
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
