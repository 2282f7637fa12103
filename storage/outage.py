"""Riding out a lost database: a PostgreSQL restart, a dropped connection, a network blip.

Every call of the study storage that fails for want of a connection is tried again, with a
growing pause, for up to the storage's ``outage_patience`` seconds; after that it raises
:class:`~storage.errors.DatabaseUnreachable` (one line; exit status 3 at the command line). Any
other failure (a bad statement, a trial finished already) raises at once. Optuna wraps database
errors in ``StorageInternalError``; what decides is the error underneath.

A write is repeated whole, so one whose commit reached the database just before its connection
dropped runs twice. Optuna's writes are idempotent under that but for two, settled here and in
storage.stale: a repeated state change finds the trial finished already, which counts as done
(:meth:`OutageTolerantStorage.set_trial_state_values`); a repeated trial creation leaves a second
RUNNING trial that nobody runs, which, without a heartbeat, is failed once the grace period passes
and, having no params, not retried. Heartbeats are not repeated here: a heartbeat thread tries
again at its next beat.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from abliterate.storage.errors import DatabaseUnreachable
from abliterate.storage.optuna_access import PRIVATE_SESSION_METHODS
from abliterate.storage.stale import HeartbeatStorage

T = TypeVar("T")
LONGEST_PAUSE = 5.0  # seconds between tries once the pauses have grown: a restarted server is used soon after it is up


def transient(error: BaseException) -> bool:
    """Whether ``error`` is a lost or refused database connection, which a later try may not meet."""
    if isinstance(error, StorageInternalError):
        error = error.__cause__
    return isinstance(error, (OperationalError, InterfaceError)) or (isinstance(error, DBAPIError) and error.connection_invalidated)


def describe(error: BaseException) -> str:
    """The first line of the database's own message."""
    if isinstance(error, StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class OutageTolerantStorage(HeartbeatStorage):
    """The study storage: heartbeats (storage.stale), and database calls that ride out an outage
    of up to :attr:`outage_patience` seconds (0: none; the lost database is reported at once)."""

    outage_patience: float = 0.0

    @staticmethod
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def tolerate_outages(self, patience: float, say: Callable[[str], None] | None = None) -> None:
        """Ride out outages of up to ``patience`` seconds from now on, saying when one begins and ends."""
        self.outage_patience = patience
        if say is not None:
            self.say = say

    @contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Another patience inside the block: e.g. none for a call that must not hold up its caller."""
        kept, self.outage_patience = self.outage_patience, seconds
        try:
            yield
        finally:
            self.outage_patience = kept

    def ride_out(self, call: Callable[[], T]) -> T:
        """``call()``, tried again while it fails for a lost connection, for up to the patience."""
        began, pause = None, 0.5
        while True:
            try:
                result = call()
            except Exception as error:
                if not transient(error):
                    raise
                now = time.monotonic()
                if began is None:
                    began = now
                    if self.outage_patience > 0:
                        self.say(f"database unreachable ({describe(error)}); trying again for up to {self.outage_patience:.0f} s")
                if now - began >= self.outage_patience:
                    lasted = f" for {now - began:.0f} s" if self.outage_patience > 0 else ""
                    raise DatabaseUnreachable(f"lost the database{lasted} ({describe(error)}); check that the server runs, "
                                              "then try again") from None
                time.sleep(min(pause, began + self.outage_patience - now))
                pause = min(2 * pause, LONGEST_PAUSE)
                continue
            if began is not None:
                self.say(f"database reachable again after {time.monotonic() - began:.0f} s")
            return result

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            try:
                return HeartbeatStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                # A repeat whose first try was committed before its connection dropped: done.
                if tries > 1 and state.is_finished() and self.get_trial(trial_id).state == state:
                    return True
                raise

        return self.ride_out(attempt)


def _riding_out(name: str) -> Callable:
    method = getattr(HeartbeatStorage, name)

    @functools.wraps(method)
    def riding_out(self, *args, **kwargs):
        return self.ride_out(functools.partial(method, self, *args, **kwargs))

    return riding_out


# Every call that opens a session, the private ones included: Optuna's trial cache calls those.
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
              "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
              "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial",
              "set_trial_param", "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
              "get_best_trial", *PRIVATE_SESSION_METHODS):
    setattr(OutageTolerantStorage, _name, _riding_out(_name))
