"""Local worker processes, any number per device, each restarted when it dies, until all are done.

Every worker is supervised on its own. When one dies, the trial it was running is queued again
at once and its direction-cache claim given back (search.interrupts), instead of waiting out the
grace period of the heartbeats. Ctrl-C or SIGTERM to the launcher stops every worker with
SIGTERM (each queues its trial again itself) and then raises KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DATABASE_UNREACHABLE = 3  # a command's exit status when the database cannot be reached
BAD_INPUT = 2  # a user error (bad model, device, study): the same on every restart
STOP_PATIENCE = 30.0  # seconds a stopped worker has to queue its trial again before it is killed


def worker_command(study: str, device: str, extra: Sequence[str] = ()) -> list[str]:
    """A worker's argv. The storage URL travels in the environment (storage.urls.ENVIRONMENT):
    it may hold a password, and argv is visible to every user in ``ps``."""
    return [sys.executable, "-m", "abliterate", "worker", "--study", study, "--device", device, "--supervised", *extra]


@dataclass
class Slot:
    """One supervised worker: its device, its process (None while it waits to start again), how
    often it was restarted and the database outage it is waiting out."""

    number: int
    device: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    outage: tuple[float, int] | None = None  # when the database went away, the exits since
    start_at: float | None = None

    @property
    def name(self) -> str:
        return f"worker {self.number} on {self.device}"


def supervise(storage: str, study: str, devices: Sequence[str], max_restarts: int = 3,
              tick: Callable[[], None] | None = None, poll: float = 2.0, extra: Sequence[str] = (),
              outage_patience: float = 600.0) -> int:
    """Run a worker per entry of ``devices`` (a device named twice runs two); restart one that
    crashes (up to ``max_restarts`` times each). One that exits with a user error (status 2) is
    not restarted: a restart cannot fix it.

    A worker that exits because the database is unreachable is restarted after a growing pause
    (1, 2, 4 ... 30 s) without using up its restarts, for up to ``outage_patience`` seconds of
    outage: a database restart must not exhaust the budget meant for crashing workers.
    Returns 0 when every worker finished cleanly, 1 when one kept failing. Interrupted (SIGINT,
    SIGTERM), it stops every worker and raises KeyboardInterrupt.
    """
    from abliterate.search.interrupts import check, interrupted_once, let_go
    from abliterate.storage.urls import ENVIRONMENT

    # Workers share the supervisor's terminal: one line per event, no progress bars redrawing
    # over each other. The storage URL goes through the environment, never the command line.
    environment = {**os.environ, ENVIRONMENT: storage, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    slots = [Slot(number, device) for number, device in enumerate(devices, 1)]
    hand_over = Handover(storage, study)

    def start(slot: Slot) -> None:
        slot.started, slot.start_at = time.monotonic(), None
        slot.process = subprocess.Popen(worker_command(study, slot.device, extra), env=environment)

    def ended(slot: Slot, code: int, now: float) -> bool:
        """Deal with the exit of ``slot``'s worker; False when it failed for good."""
        pid, slot.process = slot.process.pid, None
        if code == 0:
            return True
        requeued = hand_over(pid)
        if code == BAD_INPUT:
            return False  # the worker said why
        if code == DATABASE_UNREACHABLE:
            # A worker that ran a while before losing the database starts a new outage.
            began, exits = slot.outage if slot.outage and now - slot.started < 60 else (now, 0)
            if now - began < outage_patience:
                slot.outage = (began, exits + 1)
                pause = min(30.0, 2.0 ** exits)
                print(f"{slot.name}: database unreachable; starting it again in {pause:.0f} s", file=sys.stderr)
                slot.start_at = now + pause
                return True
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        trials = f"; trial {', '.join(map(str, requeued))} queued again" if requeued else ""
        if slot.restarts < max_restarts:
            slot.restarts += 1
            print(f"{slot.name} {how}{trials}; restarting ({slot.restarts}/{max_restarts})", file=sys.stderr)
            start(slot)
            return True
        print(f"{slot.name} {how}{trials}; not restarted ({max_restarts}/{max_restarts} restarts used)", file=sys.stderr)
        return False

    status = 0
    with interrupted_once():
        try:
            for slot in slots:
                start(slot)
            while any(slot.process is not None or slot.start_at is not None for slot in slots):
                time.sleep(poll)
                check()
                if tick:
                    tick()
                hand_over.settle()  # dead workers' trials the database could not take before
                now = time.monotonic()
                for slot in slots:
                    if slot.start_at is not None and now >= slot.start_at:
                        start(slot)
                    elif slot.process is not None and (code := slot.process.poll()) is not None:
                        status = status if ended(slot, code, now) else 1
        except BaseException as error:  # Ctrl-C, SIGTERM, or a bug here: no worker outlives the launcher
            let_go(error)
            stop(slots, hand_over)
            raise
    return status


def stop(slots: Sequence[Slot], hand_over: Handover) -> None:
    """SIGTERM every running worker (each queues its trial again); one that takes longer than
    ``STOP_PATIENCE`` is killed and its trial queued again here."""
    running = [slot.process for slot in slots if slot.process is not None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_PATIENCE
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode != 0:
            hand_over(process.pid)


class Handover:
    """Queues again the trials of a dead worker of this machine and gives back its direction-cache
    claims. A worker whose trials the database cannot take now stays owed until :meth:`settle`
    reaches the database."""

    def __init__(self, storage: str, study: str):
        self.storage, self.study_name = storage, study
        self.study, self.engine = None, None
        self.owed: list[str] = []

    def __call__(self, pid: int) -> list[int]:
        """The numbers of the trials of worker ``pid`` queued again now."""
        from abliterate.search.interrupts import owner_name

        owner = owner_name(pid)
        self.owed.append(owner)
        return self.settle().get(owner, [])

    def settle(self) -> dict[str, list[int]]:
        """Hand over every owed worker now, as far as the database lets; the trials queued again, by owner."""
        if not self.owed:
            return {}
        import optuna
        from sqlalchemy.exc import SQLAlchemyError

        from abliterate.search.interrupts import requeue_trials_of
        from abliterate.storage.cache import ArtifactCache
        from abliterate.storage.errors import StorageError
        from abliterate.storage.rdb import open_storage

        done = {}
        try:
            if self.study is None:
                storage = open_storage(self.storage, create=False)
                self.study, self.engine = optuna.load_study(study_name=self.study_name, storage=storage), storage.engine
            while self.owed:
                owner = self.owed[0]
                done[owner] = requeue_trials_of(self.study, owner)
                ArtifactCache(self.engine, self.study_name, owner).release_claims()
                self.owed.pop(0)
        except KeyError:  # no such study: nothing of it ran
            self.owed.clear()
        except (SQLAlchemyError, StorageError, optuna.exceptions.StorageInternalError):
            pass  # the database is away: try again on the next round
        return done
