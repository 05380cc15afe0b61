"""Ledger tables. Times are naive UTC: SQLite compares them as text, PostgreSQL as timestamps."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from migratio.ledger.types import ArtifactStatus


class Base(DeclarativeBase):
    pass


class MigrationRow(Base):
    """One migration of one image from a source site to a destination site."""

    __tablename__ = "migrations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source_site: Mapped[str] = mapped_column(String(64))
    dest_site: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    source_md5: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source_sha512: Mapped[str | None] = mapped_column(String(128), nullable=True)
    payload_sha512: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dest_sha512: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dest_image_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source_image: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    transfer_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The result's copies beside dest_image_id (an AMI's in other regions).
    dest_copies: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The previous version of the image, as named by the submitter (else the
    # source's own ``base_image_ref`` is used).
    base_image_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The migrations of one fan-out (one image, one source, several destinations)
    # share one read of the source; None for a migration alone.
    group_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        Index("ix_migrations_due", "state", "next_attempt_at"),
        Index("ix_migrations_group", "group_id"),
        Index("ix_migrations_image", "image_id", "dest_site"),
        Index("ix_migrations_created_at", "created_at"),
    )


class TransitionRow(Base):
    """Append-only audit row: one state change (or a note when from == to)."""

    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("migrations.id", ondelete="CASCADE"), index=True
    )
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")


class ArtifactRow(Base):
    """Something a migration created that is not the final result until proven so."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("migrations.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    site: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ref: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ArtifactStatus.PRESENT.value)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Why the last removal failed, how many failed, and when to try again.
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BlockManifestRow(Base):
    """What a migrated version's destination record holds (an EBS snapshot's
    blocks and their SHA-256s, packed by the driver), so the next version of the
    image can start from that record and send only what changed."""

    __tablename__ = "block_manifests"

    migration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("migrations.id", ondelete="CASCADE"), primary_key=True
    )
    dest_site: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(255))
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_block_manifests_record", "dest_site", "record_id"),)


class JobRow(Base):
    """A Redis job (by its Sidekiq ``jid``) and the migration it created or joined.

    A job seen again (redelivered after a crash) finds its row and is not recorded twice.
    """

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    migration_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("migrations.id", ondelete="CASCADE"), index=True
    )
    outcome: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime)


class FeedbackRow(Base):
    """One Sidekiq feedback job, written with the transition it reports and sent later.

    ``created_at`` is the epoch float Sidekiq puts in the payload; ``delivered_at``
    stays empty until the job is in Redis.
    """

    __tablename__ = "feedback_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    jid: Mapped[str] = mapped_column(String(24))
    queue: Mapped[str] = mapped_column(String(255))
    worker_class: Mapped[str] = mapped_column(String(255))
    args: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (Index("ix_feedback_outbox_pending", "delivered_at", "id"),)


# The tables as Core sees them. The hot paths (claims, transitions, progress,
# artifacts) use these: an ORM statement costs several times the CPU of the
# same statement in Core (its unit of work, identity map and row evaluation).
MIGRATIONS = cast(Table, MigrationRow.__table__)
TRANSITIONS = cast(Table, TransitionRow.__table__)
ARTIFACTS = cast(Table, ArtifactRow.__table__)
FEEDBACK = cast(Table, FeedbackRow.__table__)
MANIFESTS = cast(Table, BlockManifestRow.__table__)
