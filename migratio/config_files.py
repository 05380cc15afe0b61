"""Reading the config's YAML files, and the ledger's location read from them
without validating the rest.

``migratio status`` needs only where the ledger is. Validating everything
(pydantic and every site model) costs about half of its start-up budget
(issue 12: 0.30 s), so it reads the files as YAML, checks what locates the
ledger exactly as the full validation does (same rules, same messages), and
leaves the other keys to the commands that use them (``run``, ``doctor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from migratio.errors import ConfigError
from migratio.ledger.urls import supported_url

DEFAULT_WORK_DIR = "/var/lib/migratio"
DEFAULT_SITES_DIR = "sites"


def default_ledger_url(work_dir: Path) -> str:
    """The embedded SQLite ledger in the work dir (no ``database_url``)."""
    return f"sqlite:///{work_dir / 'ledger.sqlite'}"


def ledger_url(path: Path) -> str:
    """The ledger URL the daemon config at ``path`` names, or ConfigError.

    Every file is read as the full validation reads it (a site file that is not
    UTF-8 or not YAML is refused here too); of the values, only ``database_url``
    and ``work_dir`` are checked.
    """
    raw = read_yaml(path)
    base = path.parent
    work_dir = resolve(base, Path(_text(raw, "work_dir", DEFAULT_WORK_DIR, path)))
    sites_dir = resolve(base, Path(_text(raw, "sites_dir", DEFAULT_SITES_DIR, path)))
    database_url = _text(raw, "database_url", "", path)
    if database_url:
        try:
            database_url = supported_url(database_url)
        except ValueError as exc:
            # Worded as pydantic words it for every other command.
            raise ConfigError(str(path), "database_url", f"Value error, {exc}") from None
    if work_dir.exists() and not work_dir.is_dir():
        raise ConfigError(str(path), "work_dir", f"{work_dir} is not a directory")
    for file in site_files(sites_dir):
        read_yaml(file)
    return database_url or default_ledger_url(work_dir)


def site_slots(path: Path) -> dict[str, int]:
    """``max_concurrent`` of every site of the daemon config at ``path`` that has
    one (for ``status``: which queued migrations wait for a slot), read as YAML
    only; a value the full validation would refuse is left out."""
    raw = read_yaml(path)
    sites_dir = resolve(path.parent, Path(_text(raw, "sites_dir", DEFAULT_SITES_DIR, path)))
    slots: dict[str, int] = {}
    for file in site_files(sites_dir):
        value = read_yaml(file).get("max_concurrent")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            slots[file.name.rsplit(".", 1)[0]] = value
    return slots


def _text(raw: dict[str, Any], key: str, default: str, path: Path) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(str(path), key, "Input should be a valid string")
    return value


def site_files(sites_dir: Path) -> list[Path]:
    """The site files in the sites dir (``*.example.yml`` excluded), in name order."""
    if not sites_dir.is_dir():
        raise ConfigError(str(sites_dir), "sites_dir", "is not a directory")
    return [
        file
        for file in sorted([*sites_dir.glob("*.yml"), *sites_dir.glob("*.yaml")])
        if not file.name.rsplit(".", 1)[0].endswith(".example")
    ]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or ConfigError saying why not (unreadable,
    not UTF-8, not YAML, not a mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), "", f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(syntax)"
        raise ConfigError(str(path), where, "is not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "must be a YAML mapping")
    return data


def resolve(base: Path, value: Path) -> Path:
    """A path relative to the file that names it (``base``: that file's directory)."""
    return value if value.is_absolute() else (base / value).resolve()
