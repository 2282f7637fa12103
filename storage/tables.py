"""The project's own tables, kept in the study's database beside Optuna's.

A row in ``abl_schema`` records the schema version, so later changes can migrate; a database
written by a newer version is refused rather than misread.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, Integer, LargeBinary, String, UniqueConstraint, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storage.errors import StorageError

SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(timezone.utc)


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
        return row.version
