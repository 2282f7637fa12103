"""Compute-once artifacts shared by every worker of a study (e.g. the refusal directions).

The first worker to ask claims the key by inserting a ``computing`` row, computes, and stores
the payload with its checksum; the others poll until it is ``ready``. The claimant heartbeats
the row while it computes, so a claim whose owner died goes stale and is taken over. A
computation that fails or is interrupted gives its claim back at once, and so does a launcher
for a worker it saw die (:meth:`ArtifactCache.release_claims`): the next worker computes at once
instead of waiting out ``stale_after``. Payloads live in the database itself, so workers on
different machines need no shared filesystem.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from abliterate.storage.errors import StorageError
from abliterate.storage.tables import CachedArtifact

COMPUTING, READY = "computing", "ready"


def checksum(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class ArtifactCache:
    """Study-scoped compute-once cache on the study's database."""

    def __init__(self, engine: Engine, study: str, owner: str, stale_after: float = 600.0, poll: float = 1.0):
        self.engine, self.study, self.owner = engine, study, owner
        self.stale_after, self.poll = stale_after, poll

    def get(self, key: str) -> bytes | None:
        """The ready payload of ``key``, or None."""
        with Session(self.engine) as session:
            row = self._row(session, key)
            return self._verified(row) if row is not None and row.status == READY else None

    def get_or_compute(self, key: str, compute: Callable[[], bytes], timeout: float | None = None) -> bytes:
        """The payload of ``key``, computed here only if no live worker has it or is computing it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            claimed, payload = self._claim(key)
            if payload is not None:
                return payload
            if claimed:
                return self._compute(key, compute)
            if deadline is not None and time.monotonic() > deadline:
                raise StorageError(f"gave up waiting for {key!r} of study {self.study!r} after {timeout:.0f} s; another worker is still computing it")
            time.sleep(self.poll)

    def _claim(self, key: str) -> tuple[bool, bytes | None]:
        """(claimed by us, ready payload) after one look at the row."""
        now = datetime.now(UTC)
        with Session(self.engine) as session:
            row = self._row(session, key)
            if row is None:
                session.add(CachedArtifact(study=self.study, key=key, status=COMPUTING, owner=self.owner, updated_at=now))
                try:
                    session.commit()
                    return True, None
                except IntegrityError:  # another worker inserted it first
                    return False, None
            if row.status == READY:
                return False, self._verified(row)
            if _aware(row.updated_at) > now - timedelta(seconds=self.stale_after):
                return False, None
            # The owner stopped heartbeating: take the claim over, unless someone else just did.
            taken = session.execute(
                update(CachedArtifact)
                .where(CachedArtifact.id == row.id, CachedArtifact.owner == row.owner, CachedArtifact.status == COMPUTING,
                       CachedArtifact.updated_at == row.updated_at)
                .values(owner=self.owner, updated_at=now)
            ).rowcount
            session.commit()
            return taken == 1, None

    def _compute(self, key: str, compute: Callable[[], bytes]) -> bytes:
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(key, stop), daemon=True)
        beat.start()
        try:
            payload = compute()
        except BaseException as error:
            stop.set()
            # An interrupt that landed inside a query left that query's connection holding its
            # SQLite lock while the frames that hold its cursor live: drop them before writing.
            traceback.clear_frames(error.__traceback__)
            try:
                self._release(key)
            except SQLAlchemyError:
                pass  # the database is gone too: the claim goes stale instead
            raise
        stop.set()
        beat.join()
        with Session(self.engine) as session:
            session.execute(
                update(CachedArtifact)
                .where(CachedArtifact.study == self.study, CachedArtifact.key == key, CachedArtifact.owner == self.owner)
                .values(status=READY, payload=payload, checksum=checksum(payload), updated_at=datetime.now(UTC))
            )
            session.commit()
        return payload

    def _heartbeat(self, key: str, stop: threading.Event) -> None:
        while not stop.wait(self.stale_after / 4):
            with Session(self.engine) as session:
                session.execute(
                    update(CachedArtifact)
                    .where(CachedArtifact.study == self.study, CachedArtifact.key == key, CachedArtifact.owner == self.owner,
                           CachedArtifact.status == COMPUTING)
                    .values(updated_at=datetime.now(UTC))
                )
                session.commit()

    def release_claims(self) -> int:
        """Give back every key ``owner`` is computing in this study (its process is gone); how many."""
        with Session(self.engine) as session:
            released = session.query(CachedArtifact).filter_by(study=self.study, owner=self.owner, status=COMPUTING).delete()
            session.commit()
        return released

    def _release(self, key: str) -> None:
        # A failed computation gives the key back at once instead of making others wait it out.
        with Session(self.engine) as session:
            session.query(CachedArtifact).filter_by(study=self.study, key=key, owner=self.owner, status=COMPUTING).delete()
            session.commit()

    def _row(self, session: Session, key: str) -> CachedArtifact | None:
        return session.scalar(select(CachedArtifact).where(CachedArtifact.study == self.study, CachedArtifact.key == key))

    def _verified(self, row: CachedArtifact) -> bytes:
        if row.payload is None or checksum(row.payload) != row.checksum:
            raise StorageError(f"cached {row.key!r} of study {self.study!r} fails its checksum; delete it to recompute")
        return row.payload


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
