"""Named points at which a worker can be told to stop itself, so that a test interrupts it at a
known state instead of racing it with a timer.

``ABLITERATE_HALT=POINT`` or ``POINT@TRIAL`` (a trial number) names the point (several:
comma-separated); ``ABLITERATE_HALT_ACTION`` says what happens there: ``kill`` (the default,
SIGKILL: a crash with nothing cleaned up) or ``wait`` (block until a line arrives on stdin or it
closes). Either way the worker first prints ``halt: POINT trial N`` (``halt: POINT`` for a point
outside trials) on stdout. Unset, every call is a no-op.

Points: ``directions`` (this worker holds the direction cache's claim and is about to compute;
a ``@TRIAL`` does not restrict it), ``baseline`` (the base model's refusals stored, the
directions not yet), ``asked`` (the trial is RUNNING, before its first heartbeat: waiting there,
the trial counts as crashed once the grace period passes), ``sampling`` (part of its params
recorded), ``sampled`` (all params recorded), ``recorded`` (its figures written, the trial not
yet told), ``told`` (its result stored).
"""

from __future__ import annotations

import os
import select
import signal
import sys

POINTS = ("directions", "baseline", "asked", "sampling", "sampled", "recorded", "told")
VARIABLE, ACTION = "ABLITERATE_HALT", "ABLITERATE_HALT_ACTION"


def wanted(point: str, trial_number: int | None = None) -> bool:
    """True when the environment asks to halt at ``point`` (of trial ``trial_number``)."""
    for spec in os.environ.get(VARIABLE, "").split(","):
        name, _, number = spec.partition("@")
        if name == point and (not number or trial_number is None or int(number) == trial_number):
            return True
    return False


def at(point: str, trial_number: int | None = None) -> None:
    """Halt here when the environment asks for ``point`` (of this trial); otherwise return at once."""
    if not wanted(point, trial_number):
        return
    print(f"halt: {point}" if trial_number is None else f"halt: {point} trial {trial_number}", flush=True)
    if os.environ.get(ACTION, "kill") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    # A blocking read is cut short only by a signal the main thread itself receives, and the
    # kernel may hand Ctrl-C to any thread (torch starts several): poll, so that it arrives.
    while not select.select([sys.stdin], [], [], 0.1)[0]:
        pass
    sys.stdin.readline()


class Sampling:
    """A trial whose ``suggest_*`` calls halt at ``sampling`` once one param is recorded."""

    def __init__(self, trial):
        self._trial, self._recorded = trial, 0

    def __getattr__(self, name):
        attribute = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attribute

        def suggest(*args, **kwargs):
            value = attribute(*args, **kwargs)
            self._recorded += 1
            if self._recorded == 1:
                at("sampling", self._trial.number)
            return value
        return suggest
