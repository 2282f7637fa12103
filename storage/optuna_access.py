"""Every use of Optuna's (and optuna-dashboard's) private parts, in one module.

Optuna's public API has no trial or study id, no way to change a finished trial, and no hook on
which trials count as stale; the project needs all three. Whatever reaches past the public API
is here, so that an Optuna upgrade that moves them breaks one module, and tests/test_records.py
keeps the rest of the package from reaching there itself.

A promotion's verdict belongs on its (finished) trial, so that the dashboard shows it beside the
trial's objectives: user attrs are written straight into Optuna's own table (in the JSON
encoding Optuna uses); notes go through optuna-dashboard's note functions, which keep notes in
study system attrs.
"""

from __future__ import annotations

import json
from datetime import datetime

from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.models import TrialUserAttributeModel
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

# Optuna's private storage methods that open a session of their own (its trial cache calls
# them): storage.outage rides a database outage out in these too.
PRIVATE_SESSION_METHODS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids")


def storage_of(study):
    """The storage ``study`` reads and writes through (Optuna's trial cache over the RDB storage)."""
    return study._storage


def backend_of(study):
    """The storage under Optuna's trial cache: the one :func:`storage.rdb.open_storage` made."""
    return getattr(study._storage, "_backend", study._storage)


def trial_id(trial) -> int:
    """The storage's id of ``trial`` (an Optuna Trial or FrozenTrial)."""
    return trial._trial_id


def stored_trial(study, trial):
    """``trial`` as the storage holds it now (its state may have changed since it was read)."""
    return study._storage.get_trial(trial._trial_id)


def set_system_attr(study, trial, key: str, value) -> None:
    """Set a system attr of a trial of ``study`` (Optuna's Trial offers none)."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def fail(storage, trial) -> bool:
    """Set a RUNNING trial FAIL; False when it was finished meanwhile (Optuna's own answer)."""
    return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


def record_heartbeat(storage, trial) -> None:
    storage.record_heartbeat(trial._trial_id)


def set_trial_user_attrs(storage: RDBStorage, trial, values: dict) -> None:
    """Set (or replace) user attrs of any ``trial``, finished or not."""
    with Session(storage.engine) as session:
        for key, value in values.items():
            row = session.scalar(select(TrialUserAttributeModel).where(
                TrialUserAttributeModel.trial_id == trial._trial_id, TrialUserAttributeModel.key == key))
            if row is None:
                session.add(TrialUserAttributeModel(trial_id=trial._trial_id, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
        session.commit()


def append_trial_note(storage: RDBStorage, study, trial, section: str, body: str) -> None:
    """Put ``body`` under a ``## section`` heading of the trial's dashboard note, replacing an
    earlier section of that name and keeping the rest of the note."""
    # Only here: the dashboard package takes seconds to import, and most commands write no note.
    from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

    study_id, trial_id = study._study_id, trial._trial_id
    note = get_note_from_system_attrs(storage.get_study_system_attrs(study_id), trial_id)
    heading = f"## {section}"
    kept = note["body"].split(f"\n\n{heading}\n", 1)[0]
    if kept.startswith(f"{heading}\n"):
        kept = ""
    text = f"{kept}\n\n{heading}\n{body}" if kept else f"{heading}\n{body}"
    save_note_with_version(storage, study_id, trial_id, note["version"] + 1, text)


class StaleTrialsHook(RDBStorage):
    """Optuna's RDB storage with a public hook on which trials its heartbeat reaping fails."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id, super()._get_stale_trial_ids(study_id))

    def stale_trial_ids(self, study_id: int, stale: list[int]) -> list[int]:
        """The ids of the stale trials of ``study_id``, given those Optuna found (``stale``)."""
        return stale


def running_without_heartbeat(storage: RDBStorage, study_id: int, started_before: datetime) -> list[int]:
    """Ids of the RUNNING trials of ``study_id`` started before ``started_before`` (in Optuna's
    stamps: the asking process's local clock) that never wrote a heartbeat."""
    with storage.engine.connect() as connection:
        beating = models.TrialHeartbeatModel.__table__
        trials = models.TrialModel.__table__
        rows = connection.execute(
            trials.select().with_only_columns(trials.c.trial_id)
            .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING,
                   trials.c.datetime_start < started_before,
                   ~trials.c.trial_id.in_(beating.select().with_only_columns(beating.c.trial_id)))
        )
        return [trial_id for (trial_id,) in rows]
