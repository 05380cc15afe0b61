"""What a hostile-input case is, and what every case works with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openstack.connection import Connection

from tests.support import glance_peer
from tests.support.redis_peer import sidekiq_job

MIB = 1 << 20
PWNED = Path("/tmp/migratio-r4-pwned")  # a shell that ran a name would create it
METACHARACTERS = f"tmpl; touch {PWNED} $(touch {PWNED}) `touch {PWNED}` | & > < * ? 'q' \"dq\" \\"


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
    """What the cases work with: the bed's two Glances, site-a's state dir (its
    database and file store) and a scratch dir; ``created`` collects the images made."""

    site_a: Connection
    site_b: Connection
    glance_a_dir: Path
    scratch: Path
    created: list[str] = field(default_factory=list)

    def upload(self, path: Path, name: str, disk_format: str, **extra: Any) -> str:
        image_id = glance_peer.upload(
            self.site_a, path, name=name, disk_format=disk_format, **extra
        )
        self.created.append(image_id)
        return image_id

    def file(self, name: str) -> Path:
        return self.scratch / name


MISSING = "00000000-0000-4000-8000-0000000000r4"
METACHAR_ID = f"$(touch {PWNED}); `id` | rm -rf /"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def job_id_of(case_id: str) -> str:
    return f"r4-{case_id}"[:64]


def good_job(image_id: str, dest: str, case_id: str) -> bytes:
    return sidekiq_job([image_id, dest], jid=job_id_of(case_id))
