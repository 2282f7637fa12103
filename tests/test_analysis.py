"""analyze, dose and controls on the shipped refuser, and their statistics.

The refuser's build trains refusal into layers 1 and 2 only (objectives/refuser/build.py,
SAFETY_LAYERS); layer 0 is frozen and tells the classes apart only from the words (held-out AUC
about 0.7 measured), layers 1 to 3 separate them completely (AUC 0.999 to 1.0).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from abliterate.objectives.analysis import crossing, parse_alphas, random_band, specificity, therapeutic_index
from abliterate.objectives.refuser import prompt_path, refuser_path
from abliterate.objectives.sweep.local import DEFAULT_TASKS
from fixtures.refuser import SAFETY_LAYERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *args):
    from abliterate.search.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def files(kind: str, purpose: str) -> str:
    return str(prompt_path(kind, purpose))


# ---- the statistics ----------------------------------------------------------------------------


def test_crossing_interpolates_and_says_when_not_reached():
    assert crossing([0, 0.5, 1], [1.0, 0.8, 0.0]) == pytest.approx(0.5 + 0.3 / 0.8 * 0.5)
    assert crossing([0, 1, 2], [0.0, 0.2, 0.9]) == pytest.approx(1 + 0.3 / 0.7)
    assert crossing([1, 0, 2], [0.9, 1.0, 0.6]) is None  # never gets to 50 %
    assert crossing([0, 1], [0.5, 0.5]) is None
    assert therapeutic_index(0.5, 1.5) == pytest.approx(3.0)
    assert therapeutic_index(None, 1.5) is None and therapeutic_index(0.5, None) is None


@pytest.mark.parametrize("text", ["1,x,2", "1,,2", "nan,1", "1", "2,2"])
def test_alphas_that_do_not_parse_are_refused(text):
    from abliterate.ablation.errors import AblationError

    with pytest.raises(AblationError, match="--alphas"):
        parse_alphas(text)


def test_alphas_are_sorted_and_distinct():
    assert parse_alphas("1, -2,0.5,-0.5,0") == [-2, -0.5, 0, 0.5, 1]


def test_specificity_counts_spreads_of_the_random_band_with_a_floor():
    band = random_band([0.0, 0.02, 0.0, 0.04])
    assert band.mean == pytest.approx(0.015) and band.count == 4
    far = specificity(0.9, band, prompts=100)  # one prompt is 0.01, under the spread
    assert far["specific"] and far["spreads"] == pytest.approx((0.9 - 0.015) / band.spread)
    near = specificity(0.03, band, prompts=48)
    assert not near["specific"]
    flat = specificity(0.05, random_band([0.0, 0.0, 0.0]), prompts=20)  # zero spread: one prompt's rate is the floor
    assert flat["spread_used"] == pytest.approx(0.05) and flat["spreads"] == pytest.approx(1.0) and not flat["specific"]


# ---- analyze -------------------------------------------------------------------------------------


def test_analyze_finds_the_safety_trained_layers(capsys, tmp_path):
    status, out, err = run(capsys, "analyze", "--model", refuser_path(), "--harmful", files("harmful", "extraction"),
                           "--harmless", files("harmless", "extraction"), "--out", tmp_path / "a", "--device", "cpu")
    assert status == 0, err
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert result["num_layers"] == 4 and result["methods"] == ["mean", "mean-projected", "pca", "probe"]
    # Every method, and the held-out AUC, puts the start of the best region in the safety-trained layers,
    # and the frozen layer 0 well below it.
    for method in result["methods"]:
        assert result["best_layer"][method] in SAFETY_LAYERS, method
        assert max(result["auc"][method][1:]) - result["auc"][method][0] > 0.04, method
    assert result["best_layer_heldout"] in SAFETY_LAYERS
    assert result["auc_heldout"][0] < 0.9 < min(result["auc_heldout"][1:3])
    # The feature is written by the safety layers: the separation grows through them, not in layer 0.
    strength = result["strength"]["mean"]
    assert strength[2] > 5 * strength[1] > 5 * strength[0]
    cosines = torch.tensor(result["cosines"])
    assert torch.allclose(cosines.diagonal(dim1=1, dim2=2), torch.ones(4, 4), atol=1e-5)
    assert cosines[2].min() > 0.9  # where the feature is strong, every method finds the same direction
    for name in ("analysis.json", "layers.png", "cosines.png"):
        assert f"wrote {tmp_path / 'a' / name}" in out
        assert (tmp_path / "a" / name).stat().st_size > 1000


# ---- a study on the refuser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, refuser):
    """A SQLite study of the refuser with its directions cached and one finished trial, 0: layer 2's
    direction removed from the safety layers (the real edit)."""
    import optuna

    from abliterate.ablation.resolve import payload_key
    from abliterate.objectives.payload import compute_payload
    from abliterate.objectives.refuser import PROMPT_FILES, PROMPTS_DIR
    from abliterate.search.space import starting_points, suggest
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.search.trial import capture_extraction, directions_to_bytes
    from abliterate.storage.cache import ArtifactCache
    from abliterate.storage.rdb import open_storage

    folder = tmp_path_factory.mktemp("analysis-study")
    sides = {kind: {p: str(PROMPTS_DIR / PROMPT_FILES[kind, p]) for p in ("extraction", "evaluation", "confirmation")}
             for kind in ("harmful", "harmless")}
    config = StudyConfig(model=str(refuser_path()), harmful=sides["harmful"], harmless=sides["harmless"], dtype="float32",
                         n_trials=2, batch_size=48, max_new_tokens=24, seed=3)
    url = f"sqlite:///{folder / 'study.db'}"
    storage = open_storage(url)
    create_or_resume(storage, "r", config)
    prompts = config.prompts()
    harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
    residuals = capture_extraction(refuser, harmful, harmless, batch_size=config.batch_size)
    directions = compute_payload(refuser, harmful, harmless, residuals, config.space, batch_size=config.batch_size)
    ArtifactCache(storage.engine, "r", "test").get_or_compute(payload_key(config.space), lambda: directions_to_bytes(directions))
    created = optuna.load_study(study_name="r", storage=url)
    edit = starting_points(config.space, 0.5, 1)[0] | {"scope": "global", "direction_index": 2 / 3, "intervention": "ablate"}
    for group in ("attn", "mlp"):  # a flat tent over layers 1 and 2 at weight one
        edit |= {f"{group}_peak": 0.5, f"{group}_peak_weight": 1.0, f"{group}_floor_fraction": 1.0, f"{group}_falloff": 1 / 3}
    created.enqueue_trial(edit)
    trial = created.ask()
    suggest(trial, config.space)
    for key, value in {"kl": 0.001, "feasible": True, "refusal_rate": 0.0, "degenerate_rate": 0.0}.items():
        trial.set_user_attr(key, value)
    created.tell(trial, [0.0, 0.001])
    return {"url": url, "folder": folder, "config": config, "directions": directions, "params": dict(trial.params)}


def test_dose_shows_refusal_falling_as_the_ablation_scale_rises(study, capsys, tmp_path, monkeypatch):
    from optuna.artifacts import get_all_artifact_meta

    from abliterate.search.kit import StudyKit

    # Without --out a trial's dose goes in the study's artifact folder, beside its database; the
    # current folder gets nothing.
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "dose", "--storage", study["url"], "--study", "r", "--trial", 0, "--alphas", "-0.5,0,0.5,1,1.5",
                           "--edgy", files("harmless", "confirmation"), "--device", "cpu")
    assert status == 0, err
    assert not list(tmp_path.iterdir())
    folder = study["folder"] / "abliterate-artifacts" / "r" / "trial-0"
    assert f"wrote {folder / 'dose.json'}" in out.splitlines() and f"wrote {folder / 'dose.png'}" in out.splitlines()
    kit = StudyKit.open(study["url"], "r")
    storage, loaded_study = kit.storage, kit.study
    assert "trial-0-dose.png" in {m.filename for m in get_all_artifact_meta(loaded_study, storage=storage)}
    assert f"attached trial-0-dose.png to study 'r' in {study['folder'] / 'abliterate-artifacts'}" in out
    result = json.loads((folder / "dose.json").read_text())
    rates = {p["alpha"]: p["refusal"] for p in result["points"]}
    assert rates[0] == 1.0 and rates[1] <= 0.05 and rates[1.5] <= 0.05
    assert all(rates[a] >= rates[b] for a, b in ((-0.5, 0), (0, 0.5), (0.5, 1), (1, 1.5)))
    assert 0 < result["refusal_50"] <= 1  # interpolated between the doses that bracket it
    kl = {p["alpha"]: p["kl"] for p in result["points"]}
    assert kl[0] == 0 and kl[1.5] > kl[1] > 0
    assert result["over_refusal_50"] is None and result["therapeutic_index"] is None
    assert "over-refusal at not reached" in out
    assert (folder / "dose.png").stat().st_size > 1000


def test_promotion_runs_the_controls_in_confirmation(study):
    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.kit import StudyKit
    from abliterate.search.promoter import DEFAULT_CONTROLS, Promoter, PromotionSettings

    assert PromotionSettings().controls == DEFAULT_CONTROLS == 10  # on unless --controls 0
    kit = StudyKit.open(study["url"], "r")
    storage, loaded_study = kit.storage, kit.study
    assert "specific" not in loaded_study.trials[0].user_attrs
    promoter = Promoter(storage, "r", LocalRunner(device="cpu"), PromotionSettings(controls=2, device="cpu"), log=lambda _: None)
    confirmation = promoter.confirm(loaded_study.trials[0])
    assert confirmation.passed and confirmation.beats_base and confirmation.specific is True
    controls = confirmation.controls
    assert controls["count"] == 2 and controls["spreads"] > 10
    # The holdout direction: learned on half the extraction prompts, it removes refusals on the other
    # half and on the confirmation prompts as the study's own direction does.
    holdout = controls["holdout"]
    assert holdout["cosine_to_edit"] > 0.9 and holdout["base_other_half"] >= 0.9 and holdout["other_half"] <= 0.1
    assert holdout["confirmation"] <= 0.1 and holdout["edit_confirmation"] <= 0.1
    trial = StudyKit.open(study["url"], "r").study.trials[0]
    assert trial.user_attrs["specific"] is True and trial.user_attrs["controls"] == controls


def test_promotion_reads_controls_already_run_and_runs_none_it_cannot(study):
    import optuna

    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.kit import StudyKit
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.search.space import SearchSpace, suggest

    storage = StudyKit.open(study["url"], "r").storage
    lines = []
    promoter = Promoter(storage, "r", LocalRunner(device="cpu"), PromotionSettings(device="cpu"), log=lines.append)
    lines.clear()  # the design's plan line
    amplify = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest(amplify, SearchSpace(interventions=("amplify",)))
    assert promoter.controls(amplify) == {"not_run": "dose and controls measure single-direction ablations; "
                                                      "this trial uses the amplify intervention"}
    assert lines == [f"trial {amplify.number}: specificity controls not run: dose and controls measure single-direction "
                     "ablations; this trial uses the amplify intervention"]
    amplify.set_user_attr("specific", False)  # an earlier run's verdict stands, whatever the edit
    amplify.set_user_attr("controls", {"specific": False, "spreads": 0.5, "count": 20})
    assert promoter.controls(amplify) == {"specific": False, "spreads": 0.5, "count": 20}
    off = Promoter(storage, "r", LocalRunner(device="cpu"), PromotionSettings(controls=0, device="cpu"), log=lambda _: None)
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest(plain, SearchSpace())
    assert off.controls(plain) == {"not_run": "--controls 0"}


@pytest.fixture(scope="module")
def faint(study, tmp_path_factory):
    """Study ``faint`` beside ``r`` (same model, prompts and directions) whose one trial removes
    the direction at weight 0.03: it refuses as the base model does, as random directions do."""
    import optuna

    from abliterate.ablation.resolve import payload_key
    from abliterate.search.space import SearchSpace, starting_points, suggest
    from abliterate.search.study import create_or_resume
    from abliterate.search.trial import directions_to_bytes
    from abliterate.storage.cache import ArtifactCache
    from abliterate.storage.rdb import open_storage

    space = SearchSpace(peak_weight=(0.0, 1.5))
    config = replace(study["config"], space=space)
    storage = open_storage(study["url"])
    create_or_resume(storage, "faint", config)
    ArtifactCache(storage.engine, "faint", "test").get_or_compute(payload_key(space), lambda: directions_to_bytes(study["directions"]))
    created = optuna.load_study(study_name="faint", storage=study["url"])
    edit = starting_points(space, 0.5, 1)[0] | {"scope": "global", "direction_index": 2 / 3, "intervention": "ablate"}
    for group in ("attn", "mlp"):
        edit |= {f"{group}_peak": 0.5, f"{group}_peak_weight": 0.03, f"{group}_floor_fraction": 1.0, f"{group}_falloff": 1 / 3}
    created.enqueue_trial(edit)
    trial = created.ask()
    suggest(trial, space)
    for key, value in {"kl": 0.0001, "feasible": True, "refusal_rate": 1.0, "degenerate_rate": 0.0}.items():
        trial.set_user_attr(key, value)
    created.tell(trial, [1.0, 0.0001])
    tasks = tmp_path_factory.mktemp("one-task")
    (tasks / "bake-pie.yaml").write_text((DEFAULT_TASKS / "bake-pie.yaml").read_text())
    return {"tasks": tasks, "trial": trial.number}


def test_a_candidate_random_directions_match_is_dropped_as_not_specific_and_said_so_everywhere(study, faint, capsys, tmp_path):
    from optuna_dashboard._note import get_note_from_system_attrs

    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.kit import StudyKit
    from abliterate.search.promoter import Promoter, PromotionSettings

    storage = StudyKit.open(study["url"], "faint").storage
    lines = []

    def promoter(**options):
        settings = PromotionSettings(attempts=3, margin=0.0, controls=3, checkpoints=str(tmp_path / "ck"), device="cpu", **options)
        return Promoter(storage, "faint", LocalRunner(faint["tasks"], device="cpu", dtype="fp32"), settings, log=lines.append)

    # margin 0: no worse than the base model passes confirmation, so the controls decide.
    promoter().run_once()
    number = faint["trial"]
    promotion = promoter().promotions.get(number)
    confirmation = promotion.details["confirmation"]
    assert promotion.status == "dropped" and confirmation["beats_base"] and not confirmation["passed"]
    assert confirmation["specific"] is False and confirmation["controls"]["count"] == 3
    assert abs(confirmation["controls"]["spreads"]) < 3 and "holdout" in confirmation["controls"]
    assert not (tmp_path / "ck").exists()  # nothing exported, nothing swept
    assert any(line.startswith(f"trial {number}: controls: not specific: refusal drop") for line in lines)

    # The note, the report and front --json say it.
    study_now = StudyKit.open(study["url"], "faint").study
    trial = study_now.trials[number]
    assert trial.user_attrs["specific"] is False and trial.user_attrs["promotion"] == "dropped"
    note = get_note_from_system_attrs(storage.get_study_system_attrs(study_now._study_id), trial._trial_id)["body"]
    assert "## Specificity controls\nnot specific: refusal drop" in note
    assert "specificity controls: not specific, its refusal drop" in note and "dropped (--include-not-specific promotes it)" in note
    status, out, err = run(capsys, "report", "--storage", study["url"], "--study", "faint")
    assert status == 0, err
    assert any(line.split()[:2] == [str(number), "dropped"] and line.split()[-1] == "no" for line in out.splitlines()), out
    assert f"trial {number}: specificity controls: not specific, its refusal drop" in " ".join(out.split())
    status, out, _ = run(capsys, "report", "--storage", study["url"], "--study", "faint", "--json")
    assert json.loads(out)[0]["confirmation"]["specific"] is False
    status, out, _ = run(capsys, "front", "--storage", study["url"], "--study", "faint", "--json")
    row = json.loads(out)[0]
    assert row["specific"] is False and row["controls"]["count"] == 3

    # Settled for the default settings; asked for, it goes on to the checkpoint and the gate.
    assert promoter().pending() == []
    lines.clear()
    include = promoter(include_not_specific=True)
    assert [t.number for t in include.pending()] == [number]
    include.run_once()
    promotion = include.promotions.get(number)
    assert promotion.status in ("accepted", "no_lift") and promotion.confirmation.passed and promotion.confirmation.specific is False
    assert f"trial {number}: not specific, promoted as --include-not-specific asks" in lines
    assert (tmp_path / "ck" / "faint" / f"trial-{number}" / "README.md").read_text().count(
        "Specificity controls: not specific, its refusal drop") == 1


def test_controls_put_the_real_direction_far_outside_the_random_band(study, capsys, tmp_path, monkeypatch):
    from optuna.artifacts import get_all_artifact_meta

    from abliterate.search.kit import StudyKit

    # Run where the user happens to be: nothing lands there unasked. The JSON and the plot go in
    # the study's artifact folder (beside its SQLite database), the plot attached to the study.
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "controls", "--storage", study["url"], "--study", "r", "--trial", 0, "--random", 4,
                           "--device", "cpu")
    assert status == 0, err
    assert not list(tmp_path.iterdir())
    artifacts = study["folder"] / "abliterate-artifacts"
    folder = artifacts / "r" / "trial-0"
    assert f"wrote {folder / 'controls.json'}" in out.splitlines() and f"wrote {folder / 'controls.png'}" in out.splitlines()
    assert f"attached trial-0-controls.png to study 'r' in {artifacts} (abliterate dashboard --storage {study['url']} shows them)" in out
    real = json.loads((folder / "controls.json").read_text())
    assert real["specificity"]["specific"] and real["specificity"]["spreads"] > 10
    assert real["random_refusal"]["mean"] >= 0.9 and real["edit"]["refusal"] <= 0.05
    holdout = real["holdout"]
    assert holdout["cosine_to_edit"] > 0.9 and holdout["heldout"]["refusal"] <= 0.1 and holdout["confirmation"]["refusal"] <= 0.1
    assert "trial 0: specific" in out

    kit = StudyKit.open(study["url"], "r")
    storage, loaded_study = kit.storage, kit.study
    trial = loaded_study.get_trials(deepcopy=False)[0]
    assert trial.user_attrs["specific"] is True and trial.user_attrs["controls"]["count"] == 4
    assert "trial-0-controls.png" in [m.filename for m in get_all_artifact_meta(loaded_study, storage=storage)]
    status, out, _ = run(capsys, "front", "--storage", study["url"], "--study", "r", "--json")
    assert {row["trial"]: row["specific"] for row in json.loads(out)}[0] is True

    # Promotion takes a specific trial, skips one found not specific, unless asked to include it.
    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.storage.optuna_access import set_trial_user_attrs

    def pending(**options):
        promoter = Promoter(storage, "r", LocalRunner(device="cpu"), PromotionSettings(**options), log=lambda _: None)
        return [t.number for t in promoter.pending()], [t.number for t in promoter.skipped()]

    assert pending() == ([0], [])
    set_trial_user_attrs(storage, trial, {"specific": False})
    try:
        assert pending() == ([], [0])
        assert pending(include_not_specific=True) == ([0], [])
    finally:
        set_trial_user_attrs(storage, trial, {"specific": True})


def test_a_random_direction_sits_inside_the_random_band(study, refuser):
    from abliterate.ablation import Baker, find_writers
    from abliterate.objectives.analysis import random_unit_directions
    from abliterate.objectives.dose import Scorer, controls
    from abliterate.search.analysis import trial_edit

    baker = Baker(find_writers(refuser.model))
    _, edit = trial_edit(study["params"], study["directions"], baker.writers)
    prompts = study["config"].prompts()
    scorer = Scorer(refuser, prompts["harmful", "evaluation"], prompts["harmless", "evaluation"], max_new_tokens=24, batch_size=48)
    stranger = random_unit_directions(1, tuple(edit.directions.shape), seed=12345)[0]
    with torch.no_grad():
        result = controls(scorer, baker, replace(edit, directions=stranger, norm_preserving=True, heads=None), count=4, seed=0)
    assert not result["specificity"]["specific"] and abs(result["specificity"]["spreads"]) <= 3


def test_analyze_a_study_attaches_its_plots(study, capsys, tmp_path):
    from optuna.artifacts import get_all_artifact_meta

    from abliterate.search.kit import StudyKit

    status, out, err = run(capsys, "analyze", "--storage", study["url"], "--study", "r", "--methods", "mean,mean-projected",
                           "--out", tmp_path / "a", "--artifacts", tmp_path / "artifacts", "--device", "cpu")
    assert status == 0, err
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert min(result["cached_cosine"]["mean-projected"]) > 0.999  # the study's own directions, recomputed
    kit = StudyKit.open(study["url"], "r")
    storage, loaded_study = kit.storage, kit.study
    assert {"layers.png", "cosines.png"} <= {m.filename for m in get_all_artifact_meta(loaded_study, storage=storage)}
    # What optuna-dashboard serves for the study's page lists them (its WSGI app, no server needed).
    import io
    from wsgiref.util import setup_testing_defaults

    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    app = wsgi(storage, artifact_store=FileSystemArtifactStore(str(tmp_path / "artifacts")))
    replies, environ = [], {"PATH_INFO": f"/api/studies/{loaded_study._study_id}", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    body = app(environ, lambda status, headers, *_: replies.append(status))
    assert replies[0].startswith("200"), environ["wsgi.errors"].getvalue()
    shown = {a["filename"] for a in json.loads(b"".join(body))["artifacts"]}
    assert {"layers.png", "cosines.png"} <= shown


# ---- bad input -------------------------------------------------------------------------------------


def test_bad_dose_and_controls_input_is_one_line(study, capsys, tmp_path, tiny):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"directions": torch.ones(4, 64)}, str(wrong))
    cases = [
        (["dose", "--model", refuser_path(), "--direction", wrong, "--harmful", files("harmful", "evaluation"),
          "--harmless", files("harmless", "evaluation"), "--edgy", "none", "--out", tmp_path / "x", "--device", "cpu"],
         "holds directions of shape [4, 64]"),
        (["dose", "--model", refuser_path(), "--direction", wrong, "--alphas", "0,one", "--out", tmp_path / "x"], "'one' is not a number"),
        (["dose", "--storage", study["url"], "--study", "r", "--trial", 7, "--out", tmp_path / "x"], "has no trial 7"),
        (["controls", "--storage", study["url"], "--study", "r", "--trial", 7], "has no trial 7"),
        (["dose", "--model", refuser_path(), "--direction", tmp_path / "absent.safetensors", "--out", tmp_path / "x"], "does not exist"),
        (["dose", "--model", refuser_path(), "--out", tmp_path / "x"], "give either --direction"),
        (["analyze", "--model", refuser_path(), "--harmful", files("harmful", "evaluation"), "--out", tmp_path / "x"], "needs --harmful and --harmless"),
        # A bare model has no study to keep its analysis: it goes only where --out says.
        (["analyze", "--model", refuser_path(), "--harmful", files("harmful", "evaluation"), "--harmless", files("harmless", "evaluation")],
         "analyze --model writes only where --out DIR says"),
        (["dose", "--model", refuser_path(), "--direction", wrong], "dose --direction writes only where --out DIR says"),
    ]
    for args, message in cases:
        status, out, err = run(capsys, *args)
        lines = [line for line in err.strip().splitlines() if not line.startswith("Loading weights")]  # a progress bar
        assert status == 2 and len(lines) == 1 and message in lines[0], (args, err)
    assert not (tmp_path / "x").exists()


def test_steering_against_the_direction_removes_refusals_and_toward_it_adds_them(capsys, tmp_path):
    directions = tmp_path / "directions.safetensors"
    status, _, err = run(capsys, "directions", "--model", refuser_path(), "--harmful", files("harmful", "extraction"),
                         "--harmless", files("harmless", "extraction"), "--out", directions, "--device", "cpu")
    assert status == 0, err
    status, out, err = run(capsys, "dose", "--model", refuser_path(), "--direction", directions, "--mode", "steer",
                           "--alphas", "-1,0,1", "--harmful", files("harmful", "evaluation"), "--harmless", files("harmless", "evaluation"),
                           "--edgy", files("harmless", "confirmation"), "--out", tmp_path / "s", "--device", "cpu")
    assert status == 0, err
    points = {p["alpha"]: p for p in json.loads((tmp_path / "s" / "dose.json").read_text())["points"]}
    assert points[0]["refusal"] == 1.0 and points[0]["over_refusal"] == 0.0 and points[0]["kl"] == 0
    assert points[-1]["refusal"] <= 0.1  # steered away from refusal at the layer the classes lie furthest apart
    assert points[1]["over_refusal"] > 0.2 and points[1]["kl"] > 0.1  # steered toward it, harmless prompts get refused


def test_steering_adds_the_vector_at_the_last_prompt_position_only(refuser):
    from abliterate.ablation.steer import steered

    texts = refuser.format_chat(["Tell me how to bake bread", "Hi"])
    encoded = refuser.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    vector = torch.zeros(128)
    vector[0] = 5.0
    outputs = {}
    with torch.no_grad():
        outputs["plain"] = refuser.model(**encoded, output_hidden_states=True).hidden_states[3]
        with steered(refuser.model, {1: vector}):
            outputs["steered"] = refuser.model(**encoded, output_hidden_states=True).hidden_states[3]
    last = encoded["attention_mask"].sum(1) - 1
    # Layer 2's output (hidden state 3): its input, layer 1's output, was steered.
    difference = (outputs["steered"] - outputs["plain"]).abs().sum(-1)  # [rows, positions]
    for row in range(2):
        assert difference[row, last[row]] > 1.0
        assert difference[row, : last[row]].max() == 0  # earlier positions are untouched (they cannot see the last one)
    outputs["after"] = refuser.model(**encoded, output_hidden_states=True).hidden_states[3]
    assert torch.equal(outputs["after"], outputs["plain"])  # the hooks are gone


def test_the_dashboard_refuses_a_missing_artifact_folder_in_one_line(study, capsys, tmp_path):
    status, _, err = run(capsys, "dashboard", "--storage", study["url"], "--artifacts", tmp_path / "absent")
    assert status == 2 and err.strip().splitlines() == [f"error: artifact folder {tmp_path / 'absent'} does not exist; "
                                                        "abliterate analyze, dose and controls make it (--artifacts DIR)"]


def test_the_dashboard_shows_the_study_s_artifact_folder_by_default(study, capsys, monkeypatch):
    import socket

    import optuna_dashboard

    served = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **options: served.update(options))
    (study["folder"] / "abliterate-artifacts").mkdir(exist_ok=True)  # analyze, dose or controls made it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, out, err = run(capsys, "dashboard", "--storage", study["url"], "--port", port)
    assert status == 0, err
    assert str(served["artifact_store"]._base_path) == str(study["folder"] / "abliterate-artifacts")
    assert f"plots from {study['folder'] / 'abliterate-artifacts'}" in out


def test_one_rule_says_where_a_study_s_artifacts_go(tmp_path, monkeypatch):
    from abliterate.storage.artifacts import ENVIRONMENT, artifact_folder, study_folder

    monkeypatch.delenv(ENVIRONMENT, raising=False)
    monkeypatch.delenv("ABLITERATE_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert artifact_folder(f"sqlite:///{tmp_path / 'db' / 's.db'}") == tmp_path / "db" / "abliterate-artifacts"  # beside the database
    assert artifact_folder(None) == tmp_path / "abliterate-artifacts"  # the default database is in the current folder
    assert artifact_folder("postgresql+psycopg2://u@h/d") == tmp_path / "abliterate-artifacts"
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "deployed"))
    assert artifact_folder("postgresql+psycopg2://u@h/d") == tmp_path / "deployed"
    assert artifact_folder(f"sqlite:///{tmp_path / 's.db'}", "given") == tmp_path / "given"
    assert study_folder(tmp_path, "../a/b", 3) == tmp_path / "_a_b" / "trial-3"  # any name stays one folder inside


def test_analyze_with_categories_finds_one_refusal_direction_after_the_safety_layers(capsys, tmp_path):
    """The refuser's harmful prompts by verb (a column of the source): before the safety layers the
    categories differ by their words (a wide cone); after them every category shares one refusal
    direction (effective dimension about 1, each category's own part small)."""
    import csv

    from fixtures.refuser import HARMFUL

    verbs = sorted(HARMFUL, key=len, reverse=True)
    source = tmp_path / "harmful.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "category"])
        for prompt in prompt_path("harmful", "extraction").read_text().splitlines():
            writer.writerow([prompt, next(v for v in verbs if v in prompt.lower())])
    status, out, err = run(capsys, "analyze", "--model", refuser_path(), "--harmful", f"{source}#prompt",
                           "--harmless", files("harmless", "extraction"), "--methods", "mean", "--categories", "category",
                           "--out", tmp_path / "c", "--device", "cpu")
    assert status == 0, err
    layers = json.loads((tmp_path / "c" / "analysis.json").read_text())["categories"]
    assert len(layers) == 4 and len(layers[0]["categories"]) >= 5
    assert layers[0]["effective_dimension"] > 2.5
    for layer in (2, 3):
        assert layers[layer]["effective_dimension"] < 1.2 and max(layers[layer]["specificity"]) < 0.2
        cosines = torch.tensor(layers[layer]["cosines"])
        assert torch.allclose(cosines.diagonal(), torch.ones(len(cosines)), atol=1e-5) and cosines.min() > 0.9
    assert "cone at layer 3:" in out and f"wrote {tmp_path / 'c' / 'categories.png'}" in out

    status, _, err = run(capsys, "analyze", "--model", refuser_path(), "--harmful", f"{source}#prompt",
                         "--harmless", files("harmless", "extraction"), "--categories", "kmeans:0", "--out", tmp_path / "k")
    assert status == 2 and "K must be a whole number" in err and not (tmp_path / "k").exists()


@pytest.mark.parametrize("space", [{"interventions": ("amplify",)}, {"methods": ("cone",)}])
def test_dose_and_controls_refuse_an_edit_that_is_not_one_direction(space):
    import optuna

    from abliterate.ablation.errors import AblationError
    from abliterate.search.analysis import not_measurable, trial_edit
    from abliterate.search.space import SearchSpace, suggest

    directions = {"mean-projected": torch.randn(4, 8), "cone": torch.randn(4, 4, 8)}
    plain = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), SearchSpace())
    assert not_measurable(plain) is None and not_measurable(plain | {"intervention": "heads"}) is None
    ablation = plain | {"intervention": "ablate"}
    assert trial_edit(ablation, directions, [])[1].directions.shape in ((8,), (4, 8))  # one direction (global or per layer): measured
    params = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), SearchSpace(**space))
    with pytest.raises(AblationError, match="single-direction ablations"):
        trial_edit(params, directions, [])


def test_controls_bake_every_direction_of_a_heads_trial_into_the_trial_s_own_heads(study):
    """A heads trial is measured as itself: the edit and each random direction change attention
    only in the columns of the heads the trial's own direction chose, and the same ones each time."""
    from abliterate.ablation import Baker, find_writers
    from abliterate.objectives.dose import Scorer, controls
    from abliterate.search.analysis import measurable_edit
    from abliterate.search.kit import StudyKit

    kit = StudyKit.open(study["url"], "r", "cpu")
    edit = measurable_edit(kit, study["params"] | {"intervention": "heads", "heads": 2})
    refuser, heads = kit.model, edit.heads
    assert sum(len(columns) for columns in heads.values()) == 2
    attention = [w for w in find_writers(refuser.model) if w.group == "attn"]
    before = [w.weight.detach().clone() for w in attention]

    class Spy(Scorer):  # the real measurement, and a look at the weights each time controls scores
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.edited = []

        def score(self):
            changed = set()
            for writer, original in zip(attention, before):
                inside = torch.zeros(original.shape[1], dtype=torch.bool)
                for start, stop in heads.get(writer.layer, ()):
                    inside[start:stop] = True
                assert torch.equal(writer.weight[:, ~inside], original[:, ~inside]), writer.name
                changed |= {(writer.layer, c) for c in range(original.shape[1]) if not torch.equal(writer.weight[:, c], original[:, c])}
            self.edited.append(changed)
            return super().score()

    prompts = study["config"].prompts()
    spy = Spy(refuser, prompts["harmful", "evaluation"], prompts["harmless", "evaluation"], max_new_tokens=8, batch_size=48)
    result = controls(spy, Baker(find_writers(refuser.model)), edit, 3)
    inside = {(layer, c) for layer, columns in heads.items() for start, stop in columns for c in range(start, stop)}
    assert spy.edited[0] == set() and len(spy.edited) == 5  # base, the edit, three random directions
    assert all(edited and edited <= inside for edited in spy.edited[1:])
    assert len(result["random"]) == 3
