"""What the ledger hands out: read-only snapshots of its rows and the intake's job records.

Three consumers read these (the supervisor and its steps, the intake, the CLI
and feedback); none of them needs to know a table or a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migratio import sidekiq


def utcnow() -> datetime:
    """Naive UTC, the ledger's only time representation."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Migration:
    """A read-only snapshot of a ledger row."""

    id: str
    source_site: str
    dest_site: str
    image_id: str
    state: str
    attempt: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    bytes_done: int
    bytes_total: int | None
    source_md5: str | None
    source_sha512: str | None
    payload_sha512: str | None
    dest_sha512: str | None
    dest_image_id: str | None
    source_image: dict[str, Any] | None
    transfer_state: dict[str, Any] | None
    last_error: str | None
    job_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    base_image_id: str | None = None
    # Fan-out: the migrations sharing one read of the source (None: alone).
    group_id: str | None = None
    # Copies of the result beside dest_image_id (an AMI's in other regions), once done.
    dest_copies: list[str] | None = None


@dataclass(frozen=True)
class KeptManifest:
    """A migrated version's record and what it holds (``block_manifests``)."""

    migration_id: str
    image_id: str
    dest_site: str
    record_id: str
    result_id: str | None  # the migration's destination image (an AMI)
    manifest: bytes


@dataclass(frozen=True)
class MigrationFilter:
    """Which migrations an operator asks for; every field that is set must match."""

    states: tuple[str, ...] = ()
    image_id: str | None = None
    job_id: str | None = None
    site: str | None = None  # as source or destination


@dataclass(frozen=True)
class Transition:
    """One row of a migration's audit trail (a note when ``from_state == to_state``)."""

    migration_id: str
    from_state: str | None
    to_state: str
    at: datetime
    host: str
    pid: int
    message: str


class ArtifactStatus(StrEnum):
    PRESENT = "present"  # exists, or may: cleanup removes it unless it is kept
    KEPT = "kept"  # became (part of) the result
    RELEASED = "released"  # a group's shared files: this member is done with them
    REMOVED = "removed"  # cleaned up


@dataclass(frozen=True)
class Artifact:
    """Something a migration created; ``last_error`` says why removing it failed so far."""

    id: int
    migration_id: str
    kind: str
    site: str | None
    ref: str
    status: ArtifactStatus
    last_error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class WholeMigration:
    """A migration whole: its fields, audit trail, artifacts and the other members
    of its fan-out group (what ``show`` prints and an archive keeps)."""

    migration: Migration
    history: list[Transition]
    artifacts: list[Artifact]
    siblings: list[Migration]


@dataclass(frozen=True)
class Change:
    """A migration created, moved to another state, or joined by another job.

    ``from_state`` is None for a new migration; ``joined_by`` names a job that
    attached itself to this migration (no state change).
    """

    migration: Migration
    from_state: str | None
    message: str
    joined_by: str | None = None


# The feedback job that reports a change. The ledger writes it to its outbox in
# the transaction that makes the change, so the report commits with it.
ChangeHook = Callable[[Change], "sidekiq.Job"]


@dataclass(frozen=True)
class UploadProgress(Change):
    """No state change: how far the running upload has got, for a feedback line.

    ``bytes_per_second`` is the rate since the previous line (or since the step began).
    """

    bytes_done: int = 0
    bytes_total: int | None = None
    bytes_per_second: float = 0.0


@dataclass(frozen=True)
class JobRequest:
    """A job from the intake: migrate ``image_id`` from ``source_site`` to ``dest_site``.

    ``origin`` says where it came from, for the audit trail (e.g. the Redis queue).
    """

    job_id: str
    source_site: str
    dest_site: str
    image_id: str
    origin: str
    base_image_id: str | None = None


class JobOutcome(StrEnum):
    CREATED = "created"  # a new migration
    ATTACHED = "attached"  # joined a migration of the same image and sites under way
    DUPLICATE = "duplicate"  # this job id is already in the ledger: nothing recorded


@dataclass(frozen=True)
class JobRecorded:
    job: JobRequest
    outcome: JobOutcome
    migration_id: str


# Fields a worker may record on its migration; anything else goes through transitions.
RECORDABLE = frozenset(
    {
        "bytes_done",
        "bytes_total",
        "source_md5",
        "source_sha512",
        "payload_sha512",
        "dest_sha512",
        "dest_image_id",
        "dest_copies",
        "source_image",
        "transfer_state",
        "last_error",
    }
)
