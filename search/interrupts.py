"""Stopping workers without losing a trial: interrupts, and the trials of a stopped worker.

A worker marks each trial it asks with its owner name (``host:pid``, :data:`RUNNING_ON`), so
that whoever sees it stop queues its trials again at once: the worker itself when interrupted
(Ctrl-C, SIGTERM), its launcher when it died. Re-queueing follows the crash rules of
storage.stale: the trial is failed and retried as the very candidate it was, when its params
are complete or it was a designed point. Without this, the trial would wait out the grace
period of the heartbeats (600 s by default).

Optuna is imported only where a study is at hand: the launcher imports this module early.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from abliterate.storage.records import RUNNING_ON  # system attr: [owner, trial number] of the worker running it


def owner_name(pid: int) -> str:
    """The owner name of a worker process of this machine (trial marks, cache claims, leases)."""
    return f"{socket.gethostname()}:{pid}"


def mark_running(study, trial, owner: str) -> None:
    """Record that ``owner`` runs ``trial``. The mark holds the trial's number because a retry
    copies the failed trial's system attrs: a copy never names the dead worker as its runner."""
    from abliterate.storage.optuna_access import set_system_attr

    set_system_attr(study, trial, RUNNING_ON, [owner, trial.number])


def requeue_trials_of(study, owner: str) -> list[int]:
    """Fail the RUNNING trials ``owner`` marked and queue each again as a crashed one (see
    storage.stale); returns their numbers. A trial told or reaped meanwhile is left alone."""
    import optuna
    from optuna.trial import TrialState

    from abliterate.storage.optuna_access import fail, storage_of, stored_trial

    storage = storage_of(study)
    retry = storage.get_heartbeat_stale_trial_callback()
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(RUNNING_ON) != [owner, trial.number]:
            continue
        try:
            if fail(storage, trial):
                if retry is not None:
                    retry(study, stored_trial(study, trial))
                requeued.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return requeued


def let_go(error: BaseException) -> None:
    """Drop the locals of the frames ``error`` (and the exceptions it arose from) passed through,
    before writing to the database.

    An interrupt raised while a query was running leaves that query's connection invalidated but
    not closed while its cursor lives, referenced from those frames; on SQLite it keeps its lock
    and every write, this process's own included, waits for it until "database is locked"."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__context__


POOL_LOG = logging.getLogger("sqlalchemy.pool")


class _Interrupt:
    """The signal handler of :func:`interrupted_once`, and its state."""

    def __init__(self):
        self.raised, self.pending, self.holding = False, False, 0

    def __call__(self, signum, frame) -> None:
        if self.raised:
            return
        if self.holding:
            self.pending = True
            return
        self.raise_()

    def raise_(self) -> None:
        self.raised = True
        # A query the interrupt cuts short loses its connection, and SQLAlchemy logs the cursor it
        # then cannot close as an error with a traceback: noise from a process stopping on purpose.
        POOL_LOG.setLevel(logging.CRITICAL)
        raise KeyboardInterrupt


_current: _Interrupt | None = None


@contextmanager
def interrupted_once() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, once: Ctrl-C reaches a launcher and its workers
    together and the launcher then sends SIGTERM, and a second interrupt must not cut short the
    re-queueing of the running trial. Outside the main thread (signals cannot be set) a no-op.

    An interrupt raised where no exception can propagate (a weakref callback, a ``__del__``) is
    lost there, silently: :func:`check` raises it again at the loop's next round."""
    global _current
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _current = _current, _Interrupt()
    previous = {signum: signal.signal(signum, _current) for signum in (signal.SIGINT, signal.SIGTERM)}
    level, hook = POOL_LOG.level, sys.unraisablehook

    def unraisable(report) -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):  # that one, check() raises again
            hook(report)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _current, sys.unraisablehook = outer, hook
        POOL_LOG.setLevel(level)


def check() -> None:
    """Raise KeyboardInterrupt when one was raised before and lost (see :func:`interrupted_once`);
    loops call it each round."""
    if _current is not None and _current.raised:
        raise KeyboardInterrupt


@contextmanager
def held() -> Iterator[None]:
    """An interrupt that arrives during the block is raised when it ends: what the block writes
    (a trial asked and marked as this worker's) is written whole. Without :func:`interrupted_once`
    a no-op."""
    interrupt = _current
    if interrupt is None:
        yield
        return
    interrupt.holding += 1
    try:
        yield
    finally:
        interrupt.holding -= 1
    if interrupt.pending and not interrupt.holding and not interrupt.raised:
        interrupt.raise_()
