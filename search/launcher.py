"""Local worker processes: one per device, restarted when one dies, until all are done."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def worker_command(storage: str, study: str, device: str, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "search.cli", "worker", "--storage", storage, "--study", study, "--device", device, *extra]


def supervise(storage: str, study: str, devices: Sequence[str], max_restarts: int = 3,
              tick: Callable[[], None] | None = None, poll: float = 2.0, extra: Sequence[str] = ()) -> int:
    """Run a worker per device; restart one that exits non-zero (up to ``max_restarts`` each).

    Returns 0 when every worker finished cleanly, 1 when one kept failing.
    """
    processes = {device: subprocess.Popen(worker_command(storage, study, device, extra)) for device in devices}
    restarts = dict.fromkeys(devices, 0)
    status = 0
    try:
        while processes:
            time.sleep(poll)
            if tick:
                tick()
            for device, process in list(processes.items()):
                code = process.poll()
                if code is None:
                    continue
                del processes[device]
                if code != 0 and restarts[device] < max_restarts:
                    restarts[device] += 1
                    print(f"worker on {device} exited with {code}; restarting ({restarts[device]}/{max_restarts})", file=sys.stderr)
                    processes[device] = subprocess.Popen(worker_command(storage, study, device, extra))
                elif code != 0:
                    status = 1
    finally:
        for process in processes.values():  # Ctrl-C: workers finish nothing half-way; their trials are retried
            process.terminate()
        for process in processes.values():
            process.wait()
    return status
