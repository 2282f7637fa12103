"""The records a study keeps in Optuna's attrs (storage.records) and the promotion state: what is
written reads back the same, records stored by earlier versions read back, the stored names and
strings never change; and no module but the owners names an attr or reaches into Optuna."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from abliterate.objectives.refusal import RefusalScore
from abliterate.search.trial import TrialOutcome
from abliterate.search.worker import measured, record
from abliterate.storage import records
from abliterate.storage.optuna_access import set_trial_user_attrs
from abliterate.storage.promotions import PromotionStore
from abliterate.storage.rdb import open_storage
from abliterate.storage.records import FINAL, Confirmation, Promotion, Status, TrialRecord, controls_attrs, verdict_attrs

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ("ablation", "objectives", "search", "storage", "abliterate")
NAMES_OWNER, OPTUNA_OWNER = Path("storage/records.py"), Path("storage/optuna_access.py")

# Any use of a literal name with Optuna's user-attr API: subscripts, get, set, dict literals, `in`.
ATTR_LITERAL = re.compile(r"""user_attrs\s*(\[|\.(get|pop|setdefault)\()\s*f?["']|set_user_attr\(\s*f?["']"""
                          r"""|user_attrs\s*=\s*(dict\()?\{\s*f?["']|["'][\w:]+["']\s+(not\s+)?in\s+[\w.()]*user_attrs""")
# Names that are also keys of other records (the base model's figures, JSON output, gate results):
# the API pattern above covers them; every other stored name must not appear as a literal at all.
SHARED_WORDS = {"abliterate", "controls", "counts", "degenerate_rate", "feasible", "kl", "over_refusal", "promotion", "pruned",
                "refusal", "refusal_rate", "specific", "worker"}
OPTUNA_PRIVATE = re.compile(
    r"""(?<!self)[.'"](_storage|_backend|_study_id|_trial_id|_cached_trial\w*|_get_stale_trial_ids|_create_new_trial"""
    r"""|_set_trial_param|_get_trials|_get_best_trial_id)\b|\b(optuna|optuna_dashboard)(\.\w+)*\._\w+"""
    r"""|from\s+(optuna|optuna_dashboard)[\w.]*\s+import\s+_""")


def stored_names() -> set[str]:
    return {value for name, value in vars(records).items() if name.isupper() and isinstance(value, str)}


def violations(path: Path, source: str) -> list[str]:
    """What ``source`` (the text of the package's ``path``) does that only the owners may."""
    found = []
    if path != NAMES_OWNER:
        distinctive = stored_names() - SHARED_WORDS
        for number, line in enumerate(source.splitlines(), 1):
            if ATTR_LITERAL.search(line):
                found.append(f"{path}:{number}: a user-attr name as a literal: {line.strip()}")
            for name in re.findall(r"""["']([\w:]+)["']""", line):
                if name in distinctive:
                    found.append(f"{path}:{number}: the stored name {name!r} as a literal (use storage.records): {line.strip()}")
    if path != OPTUNA_OWNER:
        found += [f"{path}:{n}: Optuna's private parts (use storage.optuna_access): {line.strip()}"
                  for n, line in enumerate(source.splitlines(), 1) if OPTUNA_PRIVATE.search(line)]
    return found


def test_only_the_owning_modules_name_attrs_or_reach_into_optuna():
    sources = [p for folder in PACKAGE for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 50 and ROOT / NAMES_OWNER in sources and ROOT / OPTUNA_OWNER in sources
    found = [v for p in sources for v in violations(p.relative_to(ROOT), p.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("line", [
    'done = [t for t in trials if t.user_attrs.get("feasible")]',
    "seconds = trial.user_attrs['seconds_total']",
    'trial.set_user_attr("kl", 0.1)',
    'study.enqueue_trial(point, user_attrs={"starting_point": True})',
    'if "specific" in trial.user_attrs:',
    'attrs = {"promotion_confirmation": confirmation}',
    'storage.set_trial_system_attr(trial._trial_id, "abliterate:params_complete", True)',
    "storage = study._storage",
    "from optuna.storages._rdb import models",
    "from optuna_dashboard._note import save_note_with_version",
    'for name in ("get_trial", "_get_stale_trial_ids"):',
])
def test_the_check_finds_each_kind_of_violation(line):
    assert violations(Path("search/x.py"), line)


def test_the_check_leaves_ordinary_code_alone():
    lines = ['row = {"refusal": 0.1, "kl": 0.02}', "self._storage = storage", "record = TrialRecord.of(trial)",
             'parser._actions', "study.set_user_attr(STOP, reason)"]
    assert [v for line in lines for v in violations(Path("search/x.py"), line)] == []


def test_stored_names_and_statuses_never_change():
    # Studies made by any earlier version read back: these are the strings in their databases.
    assert {v.value for v in Status} == {"confirming", "dropped", "sweeping", "accepted", "no_lift", "skipped"}
    assert FINAL == {"dropped", "accepted", "no_lift"} and all(s.final == (s in FINAL) for s in Status)
    assert (records.CONFIG, records.STOP, records.BASELINE, records.DIRECTIONS_REPORT) == (
        "abliterate", "abliterate_stop", "abliterate_baseline", "abliterate_directions_report")
    assert (records.RUNNING_ON, records.PARAMS_COMPLETE) == ("abliterate:running_on", "abliterate:params_complete")
    assert records.PROVENANCE == ("starting_point", "warm_start")


def score(value: float, complete: bool = True) -> RefusalScore:
    return RefusalScore(value, 8, {"refusal": 3, "degenerate": 1, "complied": 4}, [("q", "a")], complete=complete)


OUTCOMES = {
    "complete": (TrialOutcome(0.02, True, score(0.375), {"total": 1.23456, "kl": 0.5}, (3, 4), score(0.25), third="over-refusal"), None),
    "capability": (TrialOutcome(0.02, True, score(0.375), {"total": 1.2}, (3, 4), third="capability", capability=0.75), None),
    "over the cap": (TrialOutcome(0.9, False, None, {"total": 0.5}, (3,)), None),
    "pruned": (TrialOutcome(0.05, True, score(0.5, complete=False), {"total": 2.0}, (1, 2)), 7),
}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a worker beats itself (search.worker.run_trial)
@pytest.mark.parametrize("kind", OUTCOMES)
def test_what_a_worker_records_reads_back_as_it_measured(tmp_path, kind):
    outcome, dominated_by = OUTCOMES[kind]
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name="s")
    trial = study.ask()
    record(trial, outcome, 0.5, "host:1", dominated_by)
    stored = study.trials[0]
    read = TrialRecord.of(stored)
    assert read == measured(outcome, "host:1", dominated_by) and read.to_attrs() == stored.user_attrs
    assert read.kl == outcome.kl and read.feasible is outcome.feasible and read.seconds_total == round(outcome.seconds["total"], 3)
    assert read.worker == "host:1" and read.edited_layers == outcome.edited_layers
    if kind == "complete":
        assert (read.refusal, read.refusal_rate, read.degenerate_rate, read.over_refusal) == (0.375, 3 / 8, 1 / 8, 3 / 8)
        assert not read.pruned and read.refusal_at_least is None
    elif kind == "capability":
        assert read.capability_accuracy == 0.75 and read.over_refusal is None and outcome.values == (0.375, 0.02, 0.25)
    elif kind == "pruned":
        assert read.pruned and read.refusal_at_least == 0.5 and read.dominated_by == 7 and read.refusal is None
    else:
        assert read.refusal is None and read.refusal_rate is None and not read.pruned


def test_a_record_stored_by_an_earlier_version_reads_back_whole():
    stored = {"kl": 0.0123, "feasible": True, "worker": "h:9", "edited_layers": [2, 3], "seconds_total": 4.5, "seconds_kl": 1.0,
              "refusal": 0.25, "refusal_rate": 0.25, "degenerate_rate": 0.0, "counts": {"refusal": 2}, "starting_point": True,
              "warm_start": {"study": "old", "trial": 3}, "controls": {"specific": True, "spreads": 12.0}, "specific": True,
              "promotion": "accepted", "promotion_reason": "lift on t0", "promotion_p_min": 0.01, "promotion_pooled_p": 0.02,
              "promotion_confirmation": {"refusal": 0.2, "kl": 0.02, "feasible": True, "base_refusal": 0.9, "margin": 0.1,
                                         "passed": True, "refusal_rate": 0.2}}
    read = TrialRecord.from_attrs(stored)
    assert read.to_attrs() == stored
    assert read.seconds == {"total": 4.5, "kl": 1.0} and read.edited_layers == (2, 3) and read.starting_point
    assert read.promotion is Status.ACCEPTED and read.promotion_confirmation.base_refusal == 0.9
    assert read.promotion_confirmation.beats_base is None and not read.not_specific
    assert TrialRecord.from_attrs({}) == TrialRecord() and TrialRecord().to_attrs() == {}


def test_the_writers_put_controls_and_verdicts_under_the_stored_names(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    confirmation = Confirmation(0.2, 0.02, 0.9, 0.1, passed=False, feasible=True, beats_base=True, refusal_rate=0.2,
                                controls={"specific": False, "spreads": 0.5}, specific=False)
    # Finished trials: Optuna's own API refuses them, so these go through storage.optuna_access.
    set_trial_user_attrs(storage, study.trials[0], controls_attrs({"specific": False, "spreads": 0.5}))
    set_trial_user_attrs(storage, study.trials[0], verdict_attrs(Status.DROPPED, confirmation))
    attrs = optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs
    assert attrs == {"controls": {"specific": False, "spreads": 0.5}, "specific": False, "promotion": "dropped",
                     "promotion_confirmation": confirmation.to_record()}
    read = TrialRecord.from_attrs(attrs)
    assert read.not_specific and read.promotion == Status.DROPPED and read.promotion_confirmation == confirmation


def test_the_promotion_state_round_trips_through_its_table(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    store = PromotionStore(storage.engine, "s")
    confirmation = Confirmation(0.1, 0.03, 0.9, 0.1, passed=True, feasible=True, beats_base=True, refusal_rate=0.1,
                                controls={"not_run": "--controls 0"}, specific=None)
    store.update(4, Status.CONFIRMING, confirmation=confirmation)
    store.update(4, Status.SWEEPING, checkpoint="/ck/trial-4", error="no verdict: none", no_verdict=1)
    gate = {"accepted": True, "reason": "lift", "tasks": [], "look": 1}
    store.update(4, Status.ACCEPTED, gate=gate, runner="local", attempts=3)
    promotion = store.get(4)
    assert promotion == Promotion(Status.ACCEPTED, confirmation, "/ck/trial-4", gate, "local", 3, "no verdict: none", 1)
    assert store.all() == {4: promotion} and store.get(5) is None
    assert promotion.settled() and promotion.status.final
    with storage.engine.connect() as connection:  # stored as plain strings and JSON, as before
        status, details = connection.execute(text("select status, details from abl_promotion where trial_number = 4")).one()
    details = json.loads(details) if isinstance(details, str) else details
    assert status == "accepted" and promotion.to_record() == ("accepted", details)
    assert details["confirmation"] == {"refusal": 0.1, "kl": 0.03, "feasible": True, "base_refusal": 0.9, "margin": 0.1,
                                       "beats_base": True, "passed": True, "refusal_rate": 0.1,
                                       "controls": {"not_run": "--controls 0"}, "specific": None}


def test_a_promotion_stored_by_an_earlier_version_reads_back_and_settles_as_before():
    # Before the specificity controls: no beats_base, no controls.
    old = {"confirmation": {"refusal": 0.8, "kl": 0.01, "feasible": True, "base_refusal": 0.9, "margin": 0.1, "passed": False,
                            "refusal_rate": 0.8}}
    dropped = Promotion.from_record("dropped", old)
    assert dropped.to_record() == ("dropped", old)
    assert dropped.settled() and dropped.settled(include_not_specific=True)  # not dropped for the controls alone
    not_specific = Promotion.from_record("dropped", {"confirmation": old["confirmation"] | {
        "beats_base": True, "controls": {"specific": False}, "specific": False}})
    assert not_specific.confirmation.only_not_specific
    assert not_specific.settled() and not not_specific.settled(include_not_specific=True)
    assert not_specific.confirmation.passing().passed and not Promotion(Status.SWEEPING).settled()
    with pytest.raises(ValueError):
        Promotion.from_record("promoted", {})  # not a status any version stored
