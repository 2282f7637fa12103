"""Local worker processes: one per device, restarted when one dies, until all are done."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

DATABASE_UNREACHABLE = 3  # a command's exit status when the database cannot be reached
BAD_INPUT = 2  # a user error (bad model, device, study): the same on every restart


def worker_command(study: str, device: str, extra: Sequence[str] = ()) -> list[str]:
    """A worker's argv. The storage URL travels in the environment (storage.urls.ENVIRONMENT):
    it may hold a password, and argv is visible to every user in ``ps``."""
    return [sys.executable, "-m", "search.cli", "worker", "--study", study, "--device", device, "--supervised", *extra]


def supervise(storage: str, study: str, devices: Sequence[str], max_restarts: int = 3,
              tick: Callable[[], None] | None = None, poll: float = 2.0, extra: Sequence[str] = (),
              outage_patience: float = 600.0) -> int:
    """Run a worker per device; restart one that crashes (up to ``max_restarts`` each). One that
    exits with a user error (status 2) is not restarted: a restart cannot fix it.

    A worker that exits because the database is unreachable is restarted after a growing pause
    (1, 2, 4 ... 30 s) without using up its restarts, for up to ``outage_patience`` seconds of
    outage: a database restart must not exhaust the budget meant for crashing workers.
    Returns 0 when every worker finished cleanly, 1 when one kept failing.
    """
    from storage.urls import ENVIRONMENT

    def start(device: str) -> subprocess.Popen:
        started[device] = time.monotonic()
        # Workers share the supervisor's terminal: one line per event, no progress bars redrawing
        # over each other. The storage URL goes through the environment, never the command line.
        return subprocess.Popen(worker_command(study, device, extra),
                                env={**os.environ, ENVIRONMENT: storage, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})

    started: dict[str, float] = {}
    processes = {device: start(device) for device in devices}
    restarts = dict.fromkeys(devices, 0)
    outage: dict[str, tuple[float, int]] = {}  # device -> (outage began, exits since)
    waiting: dict[str, float] = {}  # device -> when to start its worker again
    status = 0
    try:
        while processes or waiting:
            time.sleep(poll)
            if tick:
                tick()
            now = time.monotonic()
            for device, when in list(waiting.items()):
                if now >= when:
                    del waiting[device]
                    processes[device] = start(device)
            for device, process in list(processes.items()):
                code = process.poll()
                if code is None:
                    continue
                del processes[device]
                if code == 0:
                    continue
                if code == BAD_INPUT:
                    status = 1
                    continue
                if code == DATABASE_UNREACHABLE:
                    # A worker that ran a while before losing the database starts a new outage.
                    began, exits = outage.get(device, (now, 0)) if now - started[device] < 60 else (now, 0)
                    if now - began < outage_patience:
                        outage[device] = (began, exits + 1)
                        pause = min(30.0, 2.0 ** exits)
                        print(f"worker on {device}: database unreachable; starting it again in {pause:.0f} s", file=sys.stderr)
                        waiting[device] = now + pause
                        continue
                if restarts[device] < max_restarts:
                    restarts[device] += 1
                    print(f"worker on {device} exited with {code}; restarting ({restarts[device]}/{max_restarts})", file=sys.stderr)
                    processes[device] = start(device)
                else:
                    status = 1
    finally:
        for process in processes.values():  # Ctrl-C: workers finish nothing half-way; their trials are retried
            process.terminate()
        for process in processes.values():
            process.wait()
    return status
