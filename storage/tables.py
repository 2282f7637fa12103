"""The project's own tables, kept in the study's database beside Optuna's.

A row in ``abl_schema`` records the schema version, so later changes can migrate; a database
written by a newer version is refused rather than misread.

Versions: 1 the direction cache; 2 adds leases, promotions and sweep attempts (new tables only,
so migrating from 1 is creating them).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from abliterate.storage.errors import StorageError

SCHEMA_VERSION = 2


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "abl_schema"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class CachedArtifact(Base):
    """A study-scoped blob computed once and shared by every worker (e.g. refusal directions).

    ``status`` is ``computing`` while the worker named in ``owner`` builds it (``updated_at``
    is its heartbeat) and ``ready`` once ``payload`` and its ``checksum`` are stored.
    """

    __tablename__ = "abl_artifact_cache"
    __table_args__ = (UniqueConstraint("study", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(512))
    key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(256))
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Lease(Base):
    """Who holds ``key`` until when; a holder that stops renewing loses it at ``expires_at``."""

    __tablename__ = "abl_lease"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Promotion(Base):
    """One Pareto candidate's way through confirmation, export, sweep and gate.

    ``status`` is where it stands (see ``search.promoter``); ``details`` holds what each step
    measured (confirmation scores, checkpoint, per-task counts, p-values, the decision).
    """

    __tablename__ = "abl_promotion"
    __table_args__ = (UniqueConstraint("study", "trial_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(512))
    trial_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SweepAttempt(Base):
    """One attempt of one task in one sweep (a model under one runner configuration).

    A (task, attempt) is done once it has a ``pass`` or ``fail`` row; ``invalid`` rows
    (infrastructure errors) are kept for the record, numbered by ``try_number``, and never
    count as fails.
    """

    __tablename__ = "abl_sweep_attempt"
    __table_args__ = (UniqueConstraint("sweep", "task", "attempt", "try_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep: Mapped[str] = mapped_column(String(512), index=True)
    task: Mapped[str] = mapped_column(String(512))
    attempt: Mapped[int] = mapped_column(Integer)
    try_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    seconds: Mapped[float] = mapped_column(Float)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


def ensure_schema(engine: Engine) -> int:
    """Create the project's tables on first use and check the recorded schema version."""
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        row = session.scalar(select(SchemaVersion).with_for_update())
        if row is None:
            session.add(SchemaVersion(id=1, version=SCHEMA_VERSION))
            return SCHEMA_VERSION
        if row.version > SCHEMA_VERSION:
            raise StorageError(
                f"this database was written by a newer abliterate (schema {row.version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade abliterate"
            )
        if row.version < SCHEMA_VERSION:  # every migration so far only added tables, created above
            row.version = SCHEMA_VERSION
        return row.version
