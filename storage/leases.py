"""Leases: at most one live holder per key, across processes and machines.

A lease is a row (key, owner, expires_at). Taking it is one conditional UPDATE (free, expired,
or already ours) or, for a new key, one INSERT; both are atomic on SQLite and PostgreSQL, so two
claimants never both win. A holder renews while it works; one that dies stops renewing and the
key is free again once ``expires_at`` passes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from abliterate.storage.tables import Lease


class Leases:
    """Leases of one owner on the project's tables."""

    def __init__(self, engine: Engine, owner: str, ttl: float = 600.0):
        if not 0 < ttl < math.inf:  # a lease that has expired when taken holds nothing
            raise ValueError(f"a lease lasts a finite number of seconds above 0, got {ttl}")
        self.engine, self.owner, self.ttl = engine, owner, ttl

    def acquire(self, key: str) -> bool:
        """Take ``key`` when it is free, expired or already ours; True when we hold it now."""
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self.ttl)
        with Session(self.engine) as session:
            taken = session.execute(
                update(Lease).where(Lease.key == key, or_(Lease.expires_at < now, Lease.owner == self.owner))
                .values(owner=self.owner, expires_at=expires)
            ).rowcount
            if taken:
                session.commit()
                return True
            session.add(Lease(key=key, owner=self.owner, expires_at=expires))
            try:
                session.commit()
                return True
            except IntegrityError:  # someone holds it (or inserted it a moment before us)
                return False

    def renew(self, key: str) -> bool:
        """Extend our hold on ``key``; False when we no longer hold it."""
        with Session(self.engine) as session:
            kept = session.execute(
                update(Lease).where(Lease.key == key, Lease.owner == self.owner)
                .values(expires_at=datetime.now(UTC) + timedelta(seconds=self.ttl))
            ).rowcount
            session.commit()
            return kept == 1

    def release(self, key: str) -> None:
        with Session(self.engine) as session:
            session.execute(delete(Lease).where(Lease.key == key, Lease.owner == self.owner))
            session.commit()

    @contextmanager
    def held(self, key: str, every: float | None = None) -> Iterator[threading.Event]:
        """Renew ``key`` (already acquired) every ``every`` seconds (default ttl/3) while the
        block runs, release it after.

        Yields an event that is set if the lease was lost (renewal found another owner).
        """
        stop, lost = threading.Event(), threading.Event()

        def renew():
            while not stop.wait(every or self.ttl / 3):
                try:
                    if not self.renew(key):
                        lost.set()
                        return
                except SQLAlchemyError:
                    pass  # a brief outage: the lease survives until it expires; try again

        thread = threading.Thread(target=renew, daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()
            try:
                self.release(key)
            except SQLAlchemyError:
                pass  # it expires on its own
