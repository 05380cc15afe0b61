"""Hostile inputs (reliability row R4): one long-running daemon on the test bed
takes every bad input we know of, in one go, and must answer each with one clear
line while it stays up.

The inputs: Redis jobs (not JSON, wrong types, huge, control characters, unknown
class or site, source == destination, missing image), images (backing file,
external data file, VMDK extents on host files, declared format that lies,
truncated, zero bytes, bit rot in the source's store, queued, deactivated,
killed, an ISO where a disk is needed), names and properties (shell
metacharacters, newlines, long values, non-ASCII: these must arrive unchanged),
daemon configs and CLI arguments (one line, exit 2).

Per case: the line it produced (dead letter, ledger error, CLI stderr) starts with
what the case expects and is one line. For the whole suite: the daemon's pid never
changed and it exits 0 on SIGTERM, every job is in the ledger or the dead set
exactly once, the feedback names each failure once, nothing is left in Redis's
queues, the work dir, or Glance (no queued/saving records, no copy of a refused
image). The daemon logs at DEBUG (libraries too) under a Redis with a password:
what it wrote is left for the secrets grep (R6) at the end of the session.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from openstack.connection import Connection
from testbed_lib import pidfile

from tests.support import aws_peer, glance_peer, images, migratio_cli, secrets_grep
from tests.support.bad_jobs import BAD_JOBS
from tests.support.child_argv import ChildArgvSampler
from tests.support.daemon_config import write_daemon_config
from tests.support.redis_peer import PrivateRedis, sidekiq_job
from tests.support.reliability import record

pytestmark = pytest.mark.reliability

NS = "atmosphere"
QUEUE = f"{NS}:queue:migration_site-a"
DEAD = f"{NS}:migratio:dead"
FEEDBACK = f"{NS}:queue:feedback"
MIB = 1 << 20
PWNED = Path("/tmp/migratio-r4-pwned")  # a shell that ran a name would create it
METACHARACTERS = f"tmpl; touch {PWNED} $(touch {PWNED}) `touch {PWNED}` | & > < * ? 'q' \"dq\" \\"
SUITE_TIMEOUT = 150.0


@dataclass(frozen=True)
class Case:
    """One hostile input and the line it must get. A job with a ``payload`` goes to
    the dead set; a case that can ``make`` its source image becomes a migration
    (its line is the ledger's error); ``config`` and ``argv`` cases run the CLI.
    ``expect`` is a regular expression the line must match from its start
    (``done``: a name or property that must arrive unchanged)."""

    id: str
    category: str  # "job", "image", "name", "config" or "cli"
    expect: str
    payload: bytes = b""  # job: pushed as is
    make: Callable[[Bed], str] | None = None  # image/name: returns the source image id
    then: Callable[[Bed, str], None] | None = None  # changes that image, one case at a time
    dest: str = "site-b"
    argv: tuple[str, ...] = ()  # cli: arguments after --config
    config: Callable[[Path], Path] | None = None  # config: writes one, returns its path


@dataclass
class Bed:
    """What the cases work with: the bed's two Glances, a scratch dir, the suite's config."""

    site_a: Connection
    site_b: Connection
    glance_a_dir: Path
    scratch: Path
    config: Path
    created: list[str] = field(default_factory=list)

    def upload(self, path: Path, name: str, disk_format: str, **extra: Any) -> str:
        image_id = glance_peer.upload(
            self.site_a, path, name=name, disk_format=disk_format, **extra
        )
        self.created.append(image_id)
        return image_id

    def file(self, name: str) -> Path:
        return self.scratch / name


# ---- the cases --------------------------------------------------------------------

MISSING = "00000000-0000-4000-8000-0000000000r4"
METACHAR_ID = f"$(touch {PWNED}); `id` | rm -rf /"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _jid(case_id: str) -> str:
    return f"r4-{case_id}"[:64]


def _job(image_id: str, dest: str, case_id: str) -> bytes:
    return sidekiq_job([image_id, dest], jid=_jid(case_id))


def job_cases() -> list[Case]:
    cases = [
        Case(f"job-{n:02d}", "job", re.escape(reason), payload=raw)
        for n, (raw, reason) in enumerate(BAD_JOBS, 1)
    ]
    long_text = "x" * 10_000
    cases += [
        Case("job-empty", "job", "not JSON: ", payload=b""),
        Case("job-null", "job", "not a JSON object but null$", payload=b"null"),
        Case("job-number", "job", "not a JSON object but a number$", payload=b"42"),
        Case("job-boolean", "job", "not a JSON object but a boolean$", payload=b"true"),
        Case("job-string", "job", "not a JSON object but a string$", payload=b'"img-1 site-b"'),
        Case(
            "job-10MB",
            "job",
            "unknown class 'r4-huge'$",
            payload=json.dumps({"class": "r4-huge", "junk": "j" * 10_000_000}).encode(),
        ),
        Case(
            "job-10KB-image",
            "job",
            re.escape("args[0] (source image uuid) is longer than 255 characters"),
            payload=sidekiq_job([long_text, "site-b"]),
        ),
        Case(
            "job-10KB-site",
            "job",
            re.escape("args[1] (destination site id) is longer than 255 characters"),
            payload=sidekiq_job(["img-1", long_text]),
        ),
        Case(
            "job-10KB-jid",
            "job",
            "jid is longer than 64 characters$",
            payload=sidekiq_job(["img-1", "site-b"], jid=long_text),
        ),
        Case(
            "job-nested-args",
            "job",
            re.escape('args[0] (source image uuid) must be a non-empty string, got ["img-1"]'),
            payload=sidekiq_job([["img-1"], "site-b"]),
        ),
        # Well-formed jobs whose image is not there: migrations that fail.
        Case(
            "job-missing-image",
            "job",
            f"site site-a: image {MISSING} does not exist$",
            make=lambda bed: MISSING,
        ),
        Case(
            "job-metachar-image-id",
            "job",
            re.escape(f"site site-a: image {METACHAR_ID} does not exist"),
            make=lambda bed: METACHAR_ID,
        ),
        Case(
            "job-path-image-id",
            "job",
            re.escape("site site-a: image ../../v2/images?limit=1 does not exist"),
            make=lambda bed: "../../v2/images?limit=1",
        ),
        Case(
            "job-non-ascii-image-id",
            "job",
            "site site-a: image образ-ü-✓ does not exist$",
            make=lambda bed: "образ-ü-✓",
        ),
    ]
    return cases


def _random_qcow2(bed: Bed) -> Path:
    path = bed.file("good.qcow2")
    if not path.exists():
        images.random_qcow2(path, 2)
    return path


def _random_raw(bed: Bed) -> Path:
    path = bed.file("good.raw")
    if not path.exists():
        images.random_raw(path, 2)
    return path


def _backing(bed: Bed) -> str:
    return bed.upload(
        images.qcow2_with_backing_file(bed.file("backing.qcow2")), "r4-backing", "qcow2"
    )


def _data_file(bed: Bed) -> str:
    path = images.qcow2_with_data_file(bed.file("datafile.qcow2"), bed.file("outside.raw"))
    return bed.upload(path, "r4-data-file", "qcow2")


def _extent(extent: str) -> Callable[[Bed], str]:
    def make(bed: Bed) -> str:
        name = f"extent-{abs(hash(extent))}.vmdk"
        return bed.upload(images.vmdk_descriptor(bed.file(name), extent), "r4-extent", "vmdk")

    return make


def _lying(source: Callable[[Bed], Path], declared: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(source(bed), f"r4-declared-{declared}", declared)


def _truncated_qcow2(bed: Bed) -> str:
    good = _random_qcow2(bed)
    cut = images.truncated(good, bed.file("cut.qcow2"), good.stat().st_size // 3)
    return bed.upload(cut, "r4-truncated", "qcow2")


def _zero_bytes(bed: Bed) -> str:
    empty = bed.file("empty.qcow2")
    empty.write_bytes(b"")
    return bed.upload(empty, "r4-zero-bytes", "qcow2")


def _iso(bed: Bed) -> str:
    return bed.upload(images.iso_image(bed.file("cd.iso")), "r4-iso", "iso")


def _queued(bed: Bed) -> str:
    image = bed.site_a.image.create_image(
        name="r4-queued", disk_format="raw", container_format="bare", allow_duplicates=True
    )
    bed.created.append(str(image.id))
    return str(image.id)


def _uploaded_raw(name: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(_random_raw(bed), name, "raw")


def _deactivate(bed: Bed, image_id: str) -> None:
    response = bed.site_a.image.post(f"/images/{image_id}/actions/deactivate")
    assert response.status_code == 204, response.text


def _kill(bed: Bed, image_id: str) -> None:
    """Glance marks an image `killed` when its upload failed; no API sets it, so
    the test writes it into the site's own database (the record is ours). Run
    alone: a write lock held while Glance writes makes Glance answer 500."""
    with sqlite3.connect(bed.glance_a_dir / "glance.sqlite", timeout=30) as db:
        db.execute("UPDATE images SET status = 'killed' WHERE id = ?", (image_id,))


def _store_damage(damage: Callable[[Path], None], name: str) -> Callable[[Bed], str]:
    """An image whose bytes in Glance's file store changed behind Glance's back."""

    def make(bed: Bed) -> str:
        image_id = bed.upload(_random_raw(bed), name, "raw")
        damage(bed.glance_a_dir / "images" / image_id)
        return image_id

    return make


def _cut(path: Path) -> None:
    os.truncate(path, MIB // 2)


def _flip(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))


def image_cases() -> list[Case]:
    return [
        Case("image-backing-file", "image", "qcow2 image has a backing file$", make=_backing),
        Case(
            "image-backing-file-converted",
            "image",
            "qcow2 image has a backing file$",
            make=_backing,
            dest="site-b-raw",
        ),
        Case("image-data-file", "image", "qcow2 image has an external data file$", make=_data_file),
        Case(
            "image-vmdk-host-extent",
            "image",
            "vmdk image is a bare descriptor: its data would be read from other files$",
            make=_extent("/etc/hostname"),
        ),
        Case(
            "image-vmdk-relative-extent",
            "image",
            "vmdk image is a bare descriptor: its data would be read from other files$",
            make=_extent("../../../etc/passwd"),
        ),
        Case(
            "image-qcow2-declared-raw",
            "image",
            "declared raw but the bytes are qcow2$",
            make=_lying(_random_qcow2, "raw"),
        ),
        Case(
            "image-raw-declared-qcow2",
            "image",
            "declared qcow2 but the bytes are raw$",
            make=_lying(_random_raw, "qcow2"),
        ),
        Case(
            "image-qcow2-declared-raw-converted",
            "image",
            "declared raw but the bytes are qcow2",
            make=_lying(_random_qcow2, "raw"),
            dest="site-b-raw",
        ),
        Case(
            "image-truncated-qcow2-converted",
            "image",
            re.escape("qcow2 image is damaged (qemu-img check): ERROR: ") + ".*end of the file",
            make=_truncated_qcow2,
            dest="site-b-raw",
        ),
        Case(
            "image-zero-bytes", "image", "declared qcow2 but the bytes are raw$", make=_zero_bytes
        ),
        Case(
            "image-queued", "image", f"source image {UUID} is queued, not available$", make=_queued
        ),
        Case(
            "image-deactivated",
            "image",
            f"source image {UUID} is deactivated, not available$",
            make=_uploaded_raw("r4-deactivated"),
            then=_deactivate,
        ),
        Case(
            "image-killed",
            "image",
            f"source image {UUID} is killed, not available$",
            make=_uploaded_raw("r4-killed"),
            then=_kill,
        ),
        Case(
            "image-iso-to-raw-site",
            "image",
            f"source image {UUID} is declared 'iso', not a disk image that can be converted "
            "to the raw site-b-raw requires$",
            make=_iso,
            dest="site-b-raw",
        ),
        Case(
            "image-cut-short-in-store",
            "image",
            # Glance promises the recorded size and stops short: the read times out
            # (or, by another timing, the connection breaks or the sizes differ).
            "gave up after 2 attempts: "
            f"(site site-a: download image {UUID}: |payload of migration {UUID}: )",
            make=_store_damage(_cut, "r4-cut-in-store"),
        ),
        Case(
            "image-bit-rot-in-store",
            "image",
            f"gave up after 2 attempts: payload of migration {UUID}: sha512 of the 2097152 "
            "bytes read does not match the recorded one$",
            make=_store_damage(_flip, "r4-bit-rot"),
        ),
    ]


# Names and properties that must arrive unchanged (no shell ever sees them).
HOSTILE_NAMES = {
    "name-shell-metacharacters": METACHARACTERS,
    "name-newlines-and-tabs": "line one\nline two\r\n\tand a tab",
    "name-non-ascii": "Ubuntu 24.04 — образ ✓ 日本語 \u202eevil",
}
HOSTILE_PROPERTIES = {
    "os_r4_shell": METACHARACTERS,
    "os_r4_unicode": "ünïcødé — ✓",
    "os_r4_long": "L" * 10_000,
}


def _named(name: str, **properties: str) -> Callable[[Bed], str]:
    return lambda bed: bed.upload(_random_raw(bed), name, "raw", **properties)


def name_cases() -> list[Case]:
    cases = [
        Case(case_id, "name", "done", make=_named(name)) for case_id, name in HOSTILE_NAMES.items()
    ]
    cases.append(
        Case(
            "name-hostile-properties",
            "name",
            "done",
            make=_named("r4-properties", **HOSTILE_PROPERTIES),
        )
    )
    cases.append(
        Case(
            "name-shell-metacharacters-over-ssh",
            "name",
            "done",
            make=_named(METACHARACTERS, os_r4_shell=METACHARACTERS),
            dest="site-b-ssh",
        )
    )
    # AWS keeps a name in tags and the AMI's description; its DEBUG logs are
    # botocore's signed requests, the place an access key would leak.
    cases.append(
        Case(
            "name-shell-metacharacters-to-aws",
            "name",
            "done",
            make=_named(METACHARACTERS),
            dest="aws-a",
        )
    )
    return cases


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
            "cli-two-destinations",
            "cli",
            "usage error: --to given 2 times",
            argv=("submit", "--image", "img", "--to", "site-b", "--to", "site-b-raw"),
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


def all_cases() -> list[Case]:
    return [*job_cases(), *image_cases(), *name_cases(), *config_cases(), *cli_cases()]


# ---- the daemon and the checks ------------------------------------------------------


@dataclass
class Outcome:
    """What a case produced: its line (or ``done``), and what went wrong with it."""

    line: str = ""
    problems: list[str] = field(default_factory=list)


@pytest.fixture
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture
def locked_redis(suite_dir: Path) -> Iterator[PrivateRedis]:
    """The suite's Redis wants a password: the secrets grep then has one to look for."""
    password = secrets.token_urlsafe(18)
    secrets_grep.remember("the hostile suite's Redis requirepass", password)
    peer = PrivateRedis(suite_dir / "redis", password=password).start()
    yield peer
    peer.stop()


def suite_config(directory: Path, bed_sites: Path, redis_url: str) -> Path:
    sites = directory / "sites"
    sites.mkdir()
    # A short read timeout: an image cut short in Glance's store makes Glance
    # promise more bytes than it sends, and only a timeout ends that read.
    (sites / "site-a.yml").write_text(
        yaml.safe_dump({"type": "openstack", "cloud": "site-a", "read_timeout": 2})
    )
    for name in ("site-b.yml", "site-b-raw.yml", "site-b-ssh.yml", "aws-a.yml"):
        shutil.copy(bed_sites / name, sites / name)
    return write_daemon_config(
        directory,
        sites,
        redis_url=redis_url,
        concurrency=6,
        log_level_libraries="DEBUG",
        retry={"max_attempts": 2, "base_delay": 0.2, "max_delay": 0.5},
    )


def ledger_rows(config: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config.parent / "work" / "ledger.sqlite", timeout=30) as db:
        return [tuple(row) for row in db.execute(query, args)]


def migrations_by_job(config: Path) -> dict[str, tuple[Any, ...]]:
    """job id -> (migration id, state, last_error, dest_image_id, image_id)."""
    try:
        rows = ledger_rows(
            config,
            "SELECT j.job_id, m.id, m.state, m.last_error, m.dest_image_id, m.image_id "
            "FROM jobs j JOIN migrations m ON m.id = j.migration_id",
        )
    except sqlite3.OperationalError:  # the daemon has not made its ledger yet
        return {}
    return {row[0]: row[1:] for row in rows}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def one_line_problems(line: str, expect: str) -> list[str]:
    problems = []
    if not re.match(expect, line):
        problems.append(f"expected a line matching {expect!r}, got {line[:300]!r}")
    if "\n" in line or "\r" in line:
        problems.append(f"more than one line: {line[:300]!r}")
    if len(line) > 2000:
        problems.append(f"a line of {len(line)} characters")
    return problems


def run_cli_case(case: Case, suite_config_path: Path, scratch: Path) -> Outcome:
    argv: tuple[str, ...]
    if case.config is not None:
        config = case.config(scratch / case.id)
        argv = ("run", "--until-idle")
    else:
        config, argv = suite_config_path, case.argv
    result = migratio_cli.cli(config, *argv, check=False, timeout=60)
    lines = result.stderr.splitlines()
    line = lines[0].removeprefix("migratio: ") if lines else ""
    outcome = Outcome(line, one_line_problems(line, case.expect))
    if len(lines) != 1:
        outcome.problems.append(f"{len(lines)} lines on stderr: {result.stderr[:500]!r}")
    if result.returncode != 2:
        outcome.problems.append(f"exit {result.returncode}, not 2")
    if case.config is not None and (scratch / case.id / "work").exists():
        outcome.problems.append("a refused config still made its work dir")
    return outcome


def dead_letters(peer: PrivateRedis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(peer.client.lrange(DEAD, 0, -1))]


def failure_feedback(peer: PrivateRedis) -> list[tuple[str, str]]:
    """(image id, destination) of each "Migration failed" feedback job."""
    jobs = [json.loads(raw)["args"] for raw in peer.client.lrange(FEEDBACK, 0, -1)]
    return [(args[0], args[2]) for args in jobs if str(args[3]).startswith("Migration failed")]


def image_ids(conn: Connection) -> dict[str, str]:
    return {str(image.id): str(image.status) for image in conn.image.images()}


def test_every_hostile_input_gets_one_clear_line_and_the_daemon_stays_up(
    testbed: Any,
    site_a: Connection,
    site_b: Connection,
    suite_dir: Path,
    locked_redis: PrivateRedis,
) -> None:
    started = time.monotonic()
    cases = all_cases()
    assert len({case.id for case in cases}) == len(cases)
    config = suite_config(suite_dir, testbed.sites_dir, locked_redis.url)
    scratch = suite_dir / "scratch"
    scratch.mkdir()
    bed = Bed(site_a, site_b, testbed.dir / "glance-site-a", scratch, config)
    staging = Path(
        yaml.safe_load((testbed.sites_dir / "site-b-ssh.yml").read_text())["staging_dir"]
    )
    staged_before = set(staging.rglob("*")) if staging.exists() else set()
    dest_before = image_ids(site_b)
    PWNED.unlink(missing_ok=True)
    outcomes: dict[str, Outcome] = {}

    daemon = migratio_cli.start(config, suite_dir / "daemon.log")
    pid = daemon.pid
    try:
        sshd = [server.pid for server in pidfile.load(testbed.dir) if server.name == "sshd"]
        with ChildArgvSampler([pid, *sshd], suite_dir / "child-argv.txt") as sampler:
            # Jobs first, oldest first: the dead set keeps the order they were taken in.
            dead_cases = [case for case in cases if case.category == "job" and not case.make]
            for case in dead_cases:
                locked_redis.client.lpush(QUEUE, case.payload)
            # Images and names: uploaded to site-a, then one good job each.
            # The slowest first (the SSH destination, reads that must time out).
            ledger_cases = sorted(
                (case for case in cases if case.make is not None),
                key=lambda case: (case.dest != "site-b-ssh", "in-store" not in case.id),
            )
            with ThreadPoolExecutor(4) as pool:
                sources = dict(
                    zip(
                        [case.id for case in ledger_cases],
                        pool.map(lambda case: make_source(case, bed), ledger_cases),
                        strict=True,
                    )
                )
            for case in ledger_cases:
                if case.then is not None:
                    case.then(bed, sources[case.id])
            for case in ledger_cases:
                locked_redis.client.lpush(QUEUE, _job(sources[case.id], case.dest, case.id))
            # Configs and command lines meanwhile, against the running daemon's config.
            command_cases = [case for case in cases if case.category in ("config", "cli")]
            with ThreadPoolExecutor(3) as pool:
                for case, outcome in zip(
                    command_cases,
                    pool.map(lambda case: run_cli_case(case, config, scratch), command_cases),
                    strict=True,
                ):
                    outcomes[case.id] = outcome
            assert daemon.poll() is None, "the daemon exited"

            remaining = SUITE_TIMEOUT - (time.monotonic() - started)
            wait_until(
                lambda: locked_redis.client.llen(DEAD) >= len(dead_cases),
                remaining,
                "the dead letters",
            )

            def settled() -> bool:
                found = migrations_by_job(config)
                return all(
                    _jid(case.id) in found and found[_jid(case.id)][1] in ("done", "failed")
                    for case in ledger_cases
                )

            wait_until(settled, SUITE_TIMEOUT - (time.monotonic() - started), "every migration")
            wait_until(
                lambda: (
                    not ledger_rows(
                        config, "SELECT id FROM feedback_outbox WHERE delivered_at IS NULL"
                    )
                ),
                30,
                "the feedback",
            )
            assert daemon.poll() is None and daemon.pid == pid, "the daemon exited"
    finally:
        # A daemon that exited (and so was not the same process) counts as a restart.
        restarts = 0 if daemon.poll() is None and daemon.pid == pid else 1
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(60)
    log = (suite_dir / "daemon.log").read_text(errors="backslashreplace")

    # ---- each case: its line ----
    letters = dead_letters(locked_redis)
    for case, letter in zip(dead_cases, letters, strict=False):
        outcome = Outcome(letter["reason"], one_line_problems(letter["reason"], case.expect))
        shown = case.payload[:64].decode("utf-8", errors="backslashreplace")
        if not letter["payload"].startswith(shown):
            outcome.problems.append(f"dead letter of another payload: {letter['payload'][:64]!r}")
        outcomes[case.id] = outcome
    found = migrations_by_job(config)
    feedback = failure_feedback(locked_redis)
    destination_copies: set[str] = set()
    amis: list[str] = []
    for case in ledger_cases:
        migration_id, state, error, dest_image_id, image_id = found[_jid(case.id)]
        if case.expect == "done":
            outcome = Outcome(state, [] if state == "done" else [f"{state}: {error}"])
            if state == "done" and case.dest == "aws-a":
                amis.append(dest_image_id)
            elif state == "done":
                destination_copies.add(dest_image_id)
                outcome.problems += arrived_unchanged(site_a, site_b, image_id, dest_image_id)
        else:
            outcome = Outcome(error or "", one_line_problems(error or "", case.expect))
            if state != "failed":
                outcome.problems.append(f"ended {state}, not failed")
            audit = ledger_rows(
                config,
                "SELECT message FROM transitions WHERE migration_id = ? AND to_state = 'failed'",
                migration_id,
            )
            if audit != [(error,)]:
                outcome.problems.append(f"the audit trail's failures: {audit}")
            if feedback.count((image_id, case.dest)) != 1:
                outcome.problems.append("not told to Atmosphere exactly once")
            present = ledger_rows(
                config,
                "SELECT kind, ref FROM artifacts WHERE migration_id = ? AND status = 'present'",
                migration_id,
            )
            if present:
                outcome.problems.append(f"artifacts left: {present}")
        outcomes[case.id] = outcome

    # ---- the whole suite ----
    suite_problems: list[str] = []
    if restarts or exit_code != 0:
        suite_problems.append(f"the daemon exited {exit_code} (restarts {restarts})")
    if len(letters) != len(dead_cases):
        suite_problems.append(f"{len(letters)} dead letters for {len(dead_cases)} bad jobs")
    if len(ledger_rows(config, "SELECT id FROM migrations")) != len(ledger_cases):
        suite_problems.append("migrations other than one per good job (a CLI case made one?)")
    if locked_redis.client.llen(QUEUE) or list(
        locked_redis.client.scan_iter(match=f"{NS}:migratio:processing:*")
    ):
        suite_problems.append("jobs left in the queue or a processing list")
    for marker in ("Traceback", "unexpected error", "internal error"):
        if marker in log:
            suite_problems.append(f"{marker!r} in the daemon's log")
    leftovers = [
        p
        for p in (config.parent / "work").rglob("*")
        if p.is_file() and "ledger.sqlite" not in p.name
    ]
    leaked = [f"work dir: {p}" for p in leftovers]
    for image_id, status in image_ids(site_b).items():
        if image_id in dest_before:
            continue
        if status != "active" or image_id not in destination_copies:
            leaked.append(f"site-b image {image_id} ({status}) is no copy of a done case")
    staged_after = set(staging.rglob("*")) if staging.exists() else set()
    leaked += [f"ssh staging: {p}" for p in staged_after - staged_before if p.is_file()]
    if PWNED.exists():
        suite_problems.append(f"a shell ran a hostile name: {PWNED} exists")

    clear = [case.id for case in cases if case.id in outcomes and not outcomes[case.id].problems]
    record(
        "R4",
        "hostile inputs",
        tried=len(cases),
        clear_errors=len(clear),
        daemon_restarts=restarts,
        leaked=len(leaked),
        by_category={c: sum(case.category == c for case in cases) for c in CATEGORIES},
        child_argv_seen=sampler.children_seen,
        seconds=round(time.monotonic() - started, 1),
    )
    keep_for_the_secrets_grep(locked_redis, suite_dir)
    tidy(site_a, site_b, bed.created, destination_copies)
    remove_amis(testbed.moto_url, amis)

    report = [
        f"{case.id}: {problem}"
        for case in cases
        for problem in outcomes.get(case.id, Outcome("", ["no outcome"])).problems
    ]
    assert not report + suite_problems + leaked, "\n".join(report + suite_problems + leaked)
    assert len(cases) >= 40


CATEGORIES = ("job", "image", "name", "config", "cli")


def arrived_unchanged(
    site_a: Connection, site_b: Connection, source_id: str, dest_id: str
) -> list[str]:
    source = glance_peer.get(site_a, source_id) or {}
    copy = glance_peer.get(site_b, dest_id) or {}
    problems = []
    if copy.get("name") != source.get("name"):
        problems.append(f"name {source.get('name')!r} arrived as {copy.get('name')!r}")
    for key, value in source.items():
        if key.startswith("os_r4_") and copy.get(key) != value:
            problems.append(f"property {key} arrived as {str(copy.get(key))[:80]!r}")
    if copy.get("os_hash_value") != source.get("os_hash_value"):
        problems.append("the bytes differ")
    return problems


def make_source(case: Case, bed: Bed) -> str:
    """The case's source image, made in a scratch dir of its own (cases run in threads)."""
    assert case.make is not None, case.id
    own = replace(bed, scratch=bed.scratch / case.id)
    own.scratch.mkdir()
    return case.make(own)


def remove_amis(moto_url: str, amis: list[str]) -> None:
    """The AMI and its snapshot: other tests count what the bed's moto holds."""
    ec2 = aws_peer.client("ec2", moto_url)
    for ami in amis:
        described = ec2.describe_images(ImageIds=[ami])["Images"]
        ec2.deregister_image(ImageId=ami)
        for image in described:
            for mapping in image.get("BlockDeviceMappings", []):
                if snapshot := mapping.get("Ebs", {}).get("SnapshotId"):
                    ec2.delete_snapshot(SnapshotId=snapshot)


def keep_for_the_secrets_grep(peer: PrivateRedis, directory: Path) -> None:
    """This Redis goes when the test ends; its keys and values stay in a file the
    session's secrets grep reads."""
    client: Any = peer.client
    lines: list[bytes] = []
    values: list[bytes]
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == b"zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            values = list(client.smembers(key))
        else:
            values = [client.get(key) or b""]
        lines.append(bytes(key) + b"\n" + b"\n".join(values))
    (directory / "redis-dump.txt").write_bytes(b"\n".join(lines))


def tidy(site_a: Connection, site_b: Connection, sources: list[str], copies: set[str]) -> None:
    """Remove this suite's images: the bed is shared by the whole session."""
    with ThreadPoolExecutor(4) as pool:
        done = [pool.submit(glance_peer.delete, site_a, image_id) for image_id in sources]
        done += [pool.submit(glance_peer.delete, site_b, image_id) for image_id in copies]
    for future in done:
        future.result()
