"""Crashed trials: every RUNNING trial a dead worker leaves is failed, and retried only as the
very candidate it was.

Optuna's heartbeat reaping sees only trials with a heartbeat row, but a trial is RUNNING from the
moment it is asked, before its worker writes the first beat: a worker killed in that window left
a trial RUNNING forever. Here a RUNNING trial without any heartbeat counts as stale once its start
is older than the grace period.

Optuna records params one ``suggest`` at a time, so a worker killed while sampling leaves part of
a candidate. Its built-in retry copies that part and samples the rest anew: a different
candidate under the old trial's name. Here a worker marks a trial once all its params are
recorded (:data:`PARAMS_COMPLETE`); only such a trial, or an enqueued one whose fixed params
are the whole candidate, is retried. Any other is failed and simply not repeated: the study
asks a new trial in its place, since only finished trials count.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from abliterate.storage.optuna_access import StaleTrialsHook, running_without_heartbeat
from abliterate.storage.records import PARAMS_COMPLETE, PROVENANCE


class HeartbeatStorage(StaleTrialsHook):
    """Optuna's RDB storage whose stale trials include RUNNING ones that never wrote a heartbeat."""

    def stale_trial_ids(self, study_id: int, stale: list[int]) -> list[int]:
        grace = timedelta(seconds=self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval)
        # Optuna stamps datetime_start with the asking process's local clock; so does this one.
        silent = running_without_heartbeat(self, study_id, datetime.now() - grace)
        return stale + [trial_id for trial_id in silent if trial_id not in stale]


# What a retry carries besides its params: where the candidate came from (designed starting points,
# a warm start's source trial) and the retry's own bookkeeping. Nothing the failed attempt measured
# (KL, refusal, its constraint, the sampler's notes on it) goes along: the retry records its own.
# The user attrs: storage.records.PROVENANCE.
PROVENANCE_SYSTEM_ATTRS = ("fixed_params", PARAMS_COMPLETE)


class RetrySameCandidate:
    """Heartbeat-stale callback: re-queue a failed trial with its whole candidate, at most
    ``max_retry`` times in a row; a trial with part of a candidate is not re-queued. The retry
    starts clean: its params and their provenance (:data:`storage.records.PROVENANCE`), nothing else.
    A trial is re-queued once, however many processes saw it fail."""

    def __init__(self, max_retry: int | None = 3):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        if not trial.system_attrs.get(PARAMS_COMPLETE) and not trial.system_attrs.get("fixed_params"):
            return
        if any(t.system_attrs.get("retry_history", [None])[-1] == trial.number for t in study.get_trials(deepcopy=False)):
            return  # queued already by whoever failed it first (a state change repeated after a lost connection)
        user_attrs = {k: copy.deepcopy(v) for k, v in trial.user_attrs.items() if k in PROVENANCE}
        system_attrs: dict[str, Any] = {k: copy.deepcopy(v) for k, v in trial.system_attrs.items() if k in PROVENANCE_SYSTEM_ATTRS}
        system_attrs |= {"retry_history": history, "failed_trial": trial.system_attrs.get("failed_trial", trial.number)}
        if trial.system_attrs.get(PARAMS_COMPLETE):
            study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                                                user_attrs=user_attrs, system_attrs=system_attrs))
        else:
            # An enqueued point killed while sampling: its fixed params are the candidate; queue
            # it as it was queued, without the part recorded so far.
            study.add_trial(optuna.create_trial(state=TrialState.WAITING, user_attrs=user_attrs, system_attrs=system_attrs))
