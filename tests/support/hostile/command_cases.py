"""Hostile daemon configs and command lines: each must get one line and exit 2."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from tests.support.hostile.case import METACHARACTERS, PWNED, Case


def _config_text(
    text: str | bytes, *, sites: dict[str, str] | None = None
) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        directory.mkdir(parents=True)
        sites_dir = directory / "sites"
        sites_dir.mkdir()
        for name, site in (sites or {"site-b.yml": "type: openstack\ncloud: site-b\n"}).items():
            (sites_dir / name).write_text(site, encoding="utf-8")
        path = directory / "migratio.yml"
        body = text if isinstance(text, bytes) else text.encode()
        common = f"\nwork_dir: {directory / 'work'}\nsites_dir: {sites_dir}\n".encode()
        path.write_bytes(body + (common if body.startswith(b"name:") else b""))
        return path

    return write


def _missing_config(directory: Path) -> Path:
    return directory / "nope.yml"


def _directory_config(directory: Path) -> Path:
    directory.mkdir(parents=True)
    return directory


def _config_error(where: str, why: str) -> str:
    """The line of a refused config: the file, then what is wrong in it."""
    return rf"config error: /\S+/{where}: " + why


def config_cases() -> list[Case]:
    site_id = (
        re.escape("name: Value error, must be a site id (letters, digits, '.', '_', '-')") + "$"
    )
    return [
        Case(
            "config-not-yaml",
            "config",
            _config_error("migratio.yml", r"line \d+: is not valid YAML$"),
            config=_config_text("name: [unclosed\n"),
        ),
        Case(
            "config-a-list",
            "config",
            _config_error("migratio.yml", "must be a YAML mapping$"),
            config=_config_text("- a\n- list\n"),
        ),
        Case(
            "config-unknown-key",
            "config",
            _config_error("migratio.yml", "surprise: Extra inputs are not permitted$"),
            config=_config_text("name: site-a\nsurprise: 1"),
        ),
        Case(
            "config-wrong-type",
            "config",
            _config_error("migratio.yml", "concurrency: Input should be a valid integer"),
            config=_config_text("name: site-a\nconcurrency: four"),
        ),
        Case(
            "config-out-of-range",
            "config",
            _config_error(
                "migratio.yml", "concurrency: Input should be greater than or equal to 1$"
            ),
            config=_config_text("name: site-a\nconcurrency: 0"),
        ),
        Case(
            "config-metachar-name",
            "config",
            _config_error("migratio.yml", site_id),
            config=_config_text(f"name: {json.dumps(METACHARACTERS)}"),
        ),
        Case(
            "config-10KB-name",
            "config",
            _config_error("migratio.yml", site_id),
            config=_config_text(f"name: {'n' * 10_000}"),
        ),
        Case(
            "config-binary",
            "config",
            _config_error("migratio.yml", r"is not UTF-8 text \(byte 0xff at 1\)$"),
            config=_config_text(b"\x00\xff\xfe\x1b[31m" + os.urandom(64)),
        ),
        Case(
            "config-missing",
            "config",
            _config_error("nope.yml", "cannot read: No such file or directory$"),
            config=_missing_config,
        ),
        Case(
            "config-directory",
            "config",
            r"config error: /\S+/config-directory: cannot read: Is a directory$",
            config=_directory_config,
        ),
        Case(
            "config-site-unknown-type",
            "config",
            _config_error("sites/site-b.yml", "type: Input tag 'carrier-pigeon' found"),
            config=_config_text("name: site-a", sites={"site-b.yml": "type: carrier-pigeon\n"}),
        ),
        Case(
            "config-site-with-secret",
            "config",
            _config_error(
                "sites/site-b.yml", "aws_secret_access_key: secrets do not belong in site files"
            ),
            config=_config_text(
                "name: site-a",
                sites={"site-b.yml": "type: aws\nregion: eu-west-1\naws_secret_access_key: x\n"},
            ),
        ),
        Case(
            "config-site-not-yaml",
            "config",
            _config_error("sites/site-b.yml", r"line \d+: is not valid YAML$"),
            config=_config_text("name: site-a", sites={"site-b.yml": "type: [openstack\n"}),
        ),
    ]


NOT_AN_ID = " is not a migration id or id prefix (lowercase hex digits and '-')"


def cli_cases() -> list[Case]:
    long_id = "i" * 10_000
    return [
        Case(
            "cli-unknown-option",
            "cli",
            re.escape("usage error: No such option '--bogus'. (see --help)"),
            argv=("status", "--bogus"),
        ),
        Case(
            "cli-unknown-command",
            "cli",
            re.escape("usage error: No such command 'bogus'. (see --help)"),
            argv=("bogus",),
        ),
        Case(
            "cli-missing-argument",
            "cli",
            re.escape("usage error: Missing argument 'MIGRATION_ID'. (see --help)"),
            argv=("show",),
        ),
        Case(
            "cli-unknown-site",
            "cli",
            r"usage error: --to: unknown site 'nowhere' "
            r"\(known: aws-a, site-a, site-b, site-b-raw, site-b-ssh\)$",
            argv=("submit", "--image", "img", "--to", "nowhere"),
        ),
        Case(
            "cli-same-site",
            "cli",
            "usage error: source and destination are the same site",
            argv=("submit", "--image", "img", "--from", "site-a", "--to", "site-a"),
        ),
        Case(
            "cli-repeated-destination",
            "cli",
            "usage error: --to: 'site-b' given more than once",
            argv=(
                "submit",
                "--image",
                "img",
                "--to",
                "site-b",
                "--to",
                "site-b-raw",
                "--to",
                "site-b",
            ),
        ),
        Case(
            "cli-empty-image",
            "cli",
            "usage error: image id must not be empty",
            argv=("submit", "--image", " ", "--to", "site-b"),
        ),
        Case(
            "cli-newline-image",
            "cli",
            re.escape(
                r"usage error: image id holds control or invalid characters: img\nforged line"
            ),
            argv=("submit", "--image", "img\nforged line", "--to", "site-b"),
        ),
        Case(
            "cli-escape-image",
            "cli",
            re.escape(
                r"usage error: image id holds control or invalid characters: img\x1b[2J\u202e"
            ),
            argv=("submit", "--image", "img\x1b[2J\u202e", "--to", "site-b"),
        ),
        Case(
            "cli-10KB-image",
            "cli",
            "usage error: image id is longer than 255 characters",
            argv=("submit", "--image", long_id, "--to", "site-b"),
        ),
        Case(
            "cli-bad-migration-id",
            "cli",
            re.escape(f"usage error: '$(touch {PWNED})'{NOT_AN_ID}"),
            argv=("show", f"$(touch {PWNED})"),
        ),
        Case(
            "cli-cancel-unknown",
            "cli",
            re.escape(f"usage error: '../../etc/passwd'{NOT_AN_ID}"),
            argv=("cancel", "../../etc/passwd"),
        ),
        Case(
            "cli-retry-10KB",
            "cli",
            re.escape(f"usage error: '{'i' * 77}'...{NOT_AN_ID}"),
            argv=("retry", long_id),
        ),
    ]
