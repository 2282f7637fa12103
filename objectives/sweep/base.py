"""Agent sweeps: N attempts per task of one model, each attempt stored as it finishes.

A :class:`Runner` knows how to run tasks on a model checkpoint; :func:`run_sweep` decides what
still needs running (a resumed sweep runs only what is missing) and retries invalid attempts
(infrastructure errors), which never count as fails.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

STATUSES = ("pass", "fail", "invalid")


@dataclass(frozen=True)
class Attempt:
    """One finished attempt: ``pass`` / ``fail`` count, ``invalid`` (infrastructure) does not."""

    task: str
    attempt: int
    status: str
    seconds: float
    log_path: str | None = None
    detail: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"attempt status must be one of {', '.join(STATUSES)}, got {self.status!r}")


Record = Callable[[Attempt], None]


class Runner(abc.ABC):
    """Runs agent tasks on a model checkpoint folder."""

    name: str = "runner"

    @abc.abstractmethod
    def tasks(self) -> list[str]:
        """The task names a sweep covers."""

    @abc.abstractmethod
    def settings(self) -> dict:
        """Everything that changes results (JSON-able): sweeps are cached under its fingerprint."""

    def check(self) -> None:  # noqa: B027 - optional hook: most runners have nothing to check
        """Raise :class:`~ablation.errors.AblationError` (one line naming the fix) when this
        runner cannot work here: a missing program, no Docker engine. Cheap; the promoter calls
        it before confirming or exporting anything. The default checks nothing."""

    @abc.abstractmethod
    def run(self, model: str, todo: Sequence[tuple[str, int]], record: Record, log_dir: Path) -> None:
        """Run each (task, attempt) in ``todo`` on ``model`` and ``record`` each as it finishes.

        An attempt that could not be run is recorded ``invalid``, never left out silently.
        Raises :class:`~ablation.errors.AblationError` when the runner cannot work at all here
        (no Docker engine, missing command); nothing is recorded then.
        """

    def fingerprint(self) -> str:
        text = json.dumps({"runner": self.name, **self.settings()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class AttemptStore(Protocol):
    """Where a sweep's attempts live (``storage.promotions.SweepStore``)."""

    def add(self, task: str, attempt: int, status: str, seconds: float, log_path: str | None = None,
            detail: str | None = None) -> bool: ...

    def done(self) -> set[tuple[str, int]]: ...

    def invalid_tries(self) -> Counter: ...

    def counts(self, attempts: int | None = None) -> dict[str, tuple[int, int]]: ...


def run_sweep(runner: Runner, model: str, attempts: int, store: AttemptStore, log_dir: Path,
              max_invalid: int = 2, log: Callable[[str], None] = print, fresh: bool = False) -> dict[str, tuple[int, int]]:
    """Bring ``store`` to ``attempts`` valid attempts per task where possible; task -> (passes, valid).

    An attempt is retried after an invalid try up to ``max_invalid`` more times (counted across
    resumes); one that stays invalid is left out of the counts, and the gate sees fewer attempts.
    ``fresh``: invalid tries stored before this call do not count, so attempts given up earlier
    get another ``max_invalid + 1`` tries.
    """
    wanted = [(task, a) for task in runner.tasks() for a in range(attempts)]
    earlier = store.invalid_tries() if fresh else Counter()
    while True:
        done, invalid = store.done(), store.invalid_tries()
        spent = invalid - earlier
        todo = [x for x in wanted if x not in done and spent[x] <= max_invalid]
        if not todo:
            break
        log(f"  {runner.name}: running {len(todo)} of {len(wanted)} attempts ({len(done & set(wanted))} stored)")
        runner.run(model, todo, _recorder(store, len(todo), f"  {runner.name}", log), log_dir)
        if store.done() == done and store.invalid_tries() == invalid:
            break  # the runner recorded nothing: do not spin
    given_up = [x for x in wanted if x not in store.done()]
    if given_up:
        log(f"  {len(given_up)} attempt(s) stayed invalid after {max_invalid + 1} tries and are left out: "
            + ", ".join(f"{t}#{a}" for t, a in given_up[:5]))
    return store.counts(attempts)


def progress_marks(total: int, lines: int = 10) -> set[int]:
    """After which of ``total`` attempts a sweep reports progress: about ``lines`` even steps,
    always the last one. ``progress_marks(50) == {5, 10, ..., 50}``, ``progress_marks(3) == {1, 2, 3}``."""
    return {round(total * k / lines) for k in range(1, lines + 1)} - {0} | {total}


def _recorder(store: AttemptStore, total: int, label: str, log: Callable[[str], None]) -> Callable[[Attempt], None]:
    """``record`` for one runner call: stores each attempt as it finishes and logs progress
    (a sweep of a few dozen attempts on a CPU takes minutes)."""
    marks, seen = progress_marks(total), Counter[str]()

    def record(attempt: Attempt) -> None:
        store.add(attempt.task, attempt.attempt, attempt.status, attempt.seconds, attempt.log_path, attempt.detail)
        seen[attempt.status] += 1
        count = sum(seen.values())
        if count in marks:
            log(f"{label}: {count}/{total} attempts run ({seen['pass']} passed, {seen['fail']} failed, {seen['invalid']} invalid)")

    return record
