"""Where promotions and agent-sweep attempts are kept, so a crashed promoter loses nothing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from abliterate.storage.records import Confirmation, Promotion, Status
from abliterate.storage.tables import Promotion as PromotionRow
from abliterate.storage.tables import SweepAttempt

VALID = ("pass", "fail")


class PromotionStore:
    """Status and findings of each promoted trial of one study."""

    def __init__(self, engine: Engine, study: str):
        self.engine, self.study = engine, study

    def get(self, trial_number: int) -> Promotion | None:
        with Session(self.engine) as session:
            row = self._row(session, trial_number)
            return None if row is None else Promotion.from_record(row.status, row.details or {})

    def all(self) -> dict[int, Promotion]:
        """trial number -> promotion, for every promotion of the study."""
        with Session(self.engine) as session:
            rows = session.scalars(select(PromotionRow).where(PromotionRow.study == self.study).order_by(PromotionRow.trial_number))
            return {r.trial_number: Promotion.from_record(r.status, r.details or {}) for r in rows}

    def update(self, trial_number: int, status: Status, **details) -> None:
        """Set the status and merge ``details`` (fields of :class:`Promotion`, a ``confirmation``
        as a :class:`Confirmation`) into what is stored (call it while holding the lease)."""
        details = {k: v.to_record() if isinstance(v, Confirmation) else v for k, v in details.items()}
        with Session(self.engine) as session:
            row = self._row(session, trial_number)
            if row is None:
                row = PromotionRow(study=self.study, trial_number=trial_number, status=str(status), details={})
                session.add(row)
            row.status = str(Status(status))
            row.details = {**(row.details or {}), **details}
            row.updated_at = datetime.now(UTC)
            session.commit()

    def _row(self, session: Session, trial_number: int) -> PromotionRow | None:
        return session.scalar(select(PromotionRow).where(PromotionRow.study == self.study, PromotionRow.trial_number == trial_number))


class SweepStore:
    """The attempts of one sweep (one model under one runner configuration)."""

    def __init__(self, engine: Engine, sweep: str):
        self.engine, self.sweep = engine, sweep

    def add(self, task: str, attempt: int, status: str, seconds: float, log_path: str | None = None, detail: str | None = None) -> bool:
        """Store one finished attempt; False when a valid result for it was already stored."""
        with Session(self.engine) as session:
            rows = session.scalars(select(SweepAttempt).where(
                SweepAttempt.sweep == self.sweep, SweepAttempt.task == task, SweepAttempt.attempt == attempt)).all()
            if any(r.status in VALID for r in rows):
                return False
            session.add(SweepAttempt(sweep=self.sweep, task=task, attempt=attempt, try_number=len(rows) + 1, status=status,
                                     seconds=seconds, log_path=log_path, detail=detail))
            try:
                session.commit()
            except IntegrityError:  # another promoter stored this try at the same moment
                return False
            return True

    def done(self) -> set[tuple[str, int]]:
        """(task, attempt) pairs with a valid (pass or fail) result."""
        with Session(self.engine) as session:
            rows = session.execute(select(SweepAttempt.task, SweepAttempt.attempt).where(
                SweepAttempt.sweep == self.sweep, SweepAttempt.status.in_(VALID)))
            return {(task, attempt) for task, attempt in rows}

    def invalid_tries(self) -> Counter:
        """(task, attempt) -> how many tries were invalid."""
        with Session(self.engine) as session:
            rows = session.execute(select(SweepAttempt.task, SweepAttempt.attempt, func.count()).where(
                SweepAttempt.sweep == self.sweep, SweepAttempt.status == "invalid").group_by(SweepAttempt.task, SweepAttempt.attempt))
            return Counter({(task, attempt): n for task, attempt, n in rows})

    def counts(self, attempts: int | None = None) -> dict[str, tuple[int, int]]:
        """task -> (passes, valid attempts), over attempt numbers below ``attempts`` when given."""
        with Session(self.engine) as session:
            query = select(SweepAttempt.task, SweepAttempt.status).where(SweepAttempt.sweep == self.sweep, SweepAttempt.status.in_(VALID))
            if attempts is not None:
                query = query.where(SweepAttempt.attempt < attempts)
            tally: dict[str, list[int]] = {}
            for task, status in session.execute(query):
                entry = tally.setdefault(task, [0, 0])
                entry[0] += status == "pass"
                entry[1] += 1
            return {task: (p, n) for task, (p, n) in tally.items()}
