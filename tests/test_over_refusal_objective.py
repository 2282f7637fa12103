"""A third objective: a short search on the shipped refuser minimises refusal, KL and the
refusal rate on benign-but-edgy prompts, or the share of capability questions answered wrong."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from abliterate.objectives.refuser import prompt_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *args):
    from abliterate.search.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_search_with_three_objectives_records_over_refusal_and_prunes_nothing(tmp_path, capsys):
    import optuna

    from abliterate.search.demo import demo_config
    from abliterate.search.study import create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    harmful, harmless = prompt_path("harmful", "evaluation"), prompt_path("harmless", "evaluation")
    config = demo_config(2)
    # Small sets keep it quick; half the harmless evaluation prompts stand in for the edgy set
    # (the refuser knows no edgier ones).
    config = replace(config, harmful=config.harmful | {"evaluation": f"{harmful}[0:16]"},
                     harmless=config.harmless | {"evaluation": f"{harmless}[0:12]"}, edgy=f"{harmless}[24:36]",
                     objectives="refusal,kl,over-refusal", starting_points=2, max_new_tokens=16,
                     heartbeat_interval=2, grace_period=30)
    url = f"sqlite:///{tmp_path / 'three.db'}"
    create_or_resume(open_storage(url), "three", config)
    assert run_worker(url, "three", "cpu", log=lambda _: None) == 2
    study = optuna.load_study(study_name="three", storage=url)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 3 and study.metric_names == ["refusal", "kl", "over-refusal"]
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    for trial in trials:
        assert len(trial.values) == 3 and trial.values[2] == trial.user_attrs["over_refusal"]
    capsys.readouterr()
    status, out, err = run(capsys, "front", "--storage", url, "--study", "three", "--json")
    assert status == 0, err
    front = json.loads(out)
    assert front and all(row["over_refusal"] is not None for row in front)
    status, out, err = run(capsys, "front", "--storage", url, "--study", "three")
    header = next(line for line in out.splitlines() if "refusal" in line and "KL" in line)
    assert status == 0 and header.split()[:4] == ["trial", "refusal", "KL", "over"] and max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_over_refusal_needs_edgy_prompts(tmp_path, capsys):
    status, _, err = run(capsys, "search", "--model", "unused", "--objectives", "refusal,kl,over-refusal", "--workers", 0,
                         "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert status == 2 and err.strip().splitlines() == [
        "error: the over-refusal objective needs benign-but-edgy prompts: pass --edgy SRC (e.g. rho-edgy)"]
    assert not (tmp_path / "x.db").exists()


def test_a_search_with_the_capability_objective_records_it_beside_the_base(tmp_path, capsys):
    import optuna

    from abliterate.search.baseline import baseline_of
    from abliterate.search.demo import demo_config
    from abliterate.search.study import create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    harmful, harmless = prompt_path("harmful", "evaluation"), prompt_path("harmless", "evaluation")
    config = demo_config(2)
    config = replace(config, harmful=config.harmful | {"evaluation": f"{harmful}[0:16]"},
                     harmless=config.harmless | {"evaluation": f"{harmless}[0:12]"}, objectives="refusal,kl,capability",
                     starting_points=2, max_new_tokens=16, heartbeat_interval=2, grace_period=30)
    url = f"sqlite:///{tmp_path / 'capability.db'}"
    create_or_resume(open_storage(url), "cap", config)
    assert run_worker(url, "cap", "cpu", log=lambda _: None) == 2
    study = optuna.load_study(study_name="cap", storage=url)
    assert study.metric_names == ["refusal", "kl", "capability"]
    base = baseline_of(study)
    assert 0.0 <= base["capability"] <= 1.0
    for trial in study.get_trials(deepcopy=False):
        accuracy = trial.user_attrs["capability_accuracy"]
        assert trial.values[2] == pytest.approx(1.0 - accuracy) and accuracy * 32 == round(accuracy * 32)  # 32 questions
        assert trial.user_attrs["seconds_capability"] > 0  # timed like every step of a trial
    capsys.readouterr()
    status, out, err = run(capsys, "front", "--storage", url, "--study", "cap")
    header = next(line for line in out.splitlines() if "refusal" in line and "KL" in line)
    assert status == 0 and header.split()[:4] == ["trial", "refusal", "KL", "wrong"], out
    base_row = next(line for line in out.splitlines() if line.split()[:1] == ["base"])
    assert f"{1.0 - base['capability']:.0%}" in base_row


def test_screen_pruning_is_refused_with_a_third_objective(tmp_path, capsys):
    status, _, err = run(capsys, "search", "--model", "unused", "--objectives", "refusal,kl,capability", "--screen", "prune",
                         "--workers", 0, "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert status == 2 and err.strip().splitlines() == [
        "error: --screen prune compares refusals and KL only, and this study has the capability objective; use --screen record"]
    assert not (tmp_path / "x.db").exists()
