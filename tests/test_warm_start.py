"""Warm start: another study's feasible front enqueued as the first trials, on a model of another depth."""

from __future__ import annotations

import pytest

from search.space import PRESETS, candidate_from_params, starting_points
from search.warm import fit_to_space, parse_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *args):
    from search.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def save_tiny(folder, layers: int):
    from transformers import AutoModelForCausalLM

    from ablation.tiny import tiny_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = tiny_config("qwen3", len(tokenizer))
    config.num_hidden_layers = layers
    config.layer_types = [config.layer_types[0]] * layers
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A study of a 4-layer model whose front is two feasible trials (and one infeasible trial beside it)."""
    import optuna

    from search.study import StudyConfig, create_or_resume
    from storage.rdb import open_storage

    folder = tmp_path_factory.mktemp("source")
    config = StudyConfig.split(str(save_tiny(folder / "model", 4)), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=3, seed=1)
    url = f"sqlite:///{folder / 'source.db'}"
    create_or_resume(open_storage(url), "src", config)
    study = optuna.load_study(study_name="src", storage=url)
    points = starting_points(config.space, 0.5, 3)
    for params, values, feasible in zip(points, ([0.1, 0.5], [0.6, 0.05], [0.0, 3.0]), (True, True, False)):
        study.enqueue_trial(params)
        trial = study.ask()
        from search.space import suggest

        suggest(trial, config.space)
        trial.set_user_attr("feasible", feasible)
        study.tell(trial, values)
    return {"url": url, "front": [points[0], points[1]]}


def test_the_front_lands_on_the_same_fractional_positions_of_a_deeper_model(source, tmp_path, capsys):
    import optuna

    target = save_tiny(tmp_path / "deeper", 7)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    status, out, err = run(capsys, "search", "--model", target, "--harmful", "demo-harmful", "--harmless", "demo-harmless",
                           "--split", "4,6,6", "--workers", 0, "--storage", url, "--study", "dst", "--warm-start", f"{source['url']}#src")
    assert status == 0, err
    assert "warm start: 2 trial(s) of 'src''s feasible front enqueued first" in out
    waiting = optuna.load_study(study_name="dst", storage=url).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["warm_start"]["trial"] for t in waiting] == [0, 1]  # fewest refusals first, the infeasible one left out
    for trial, params in zip(waiting, source["front"]):
        enqueued = trial.system_attrs["fixed_params"]  # what the first worker to ask it will run
        assert enqueued == params and trial.user_attrs["warm_start"]["study"] == "src"
        shallow, deep = candidate_from_params(params, 4), candidate_from_params(enqueued, 7)
        assert deep.direction_index / 6 == pytest.approx(shallow.direction_index / 3)
        for group in ("attn", "mlp"):
            assert deep.profile.kernels[group].peak / 6 == pytest.approx(shallow.profile.kernels[group].peak / 3)
    # Resuming with the same warm start enqueues nothing twice.
    status, _, err = run(capsys, "search", "--model", target, "--harmful", "demo-harmful", "--harmless", "demo-harmless",
                         "--split", "4,6,6", "--workers", 0, "--storage", url, "--study", "dst", "--warm-start", f"{source['url']}#src")
    assert status == 0, err
    assert len(optuna.load_study(study_name="dst", storage=url).get_trials(states=(optuna.trial.TrialState.WAITING,))) == 2


def test_points_are_held_inside_the_new_space():
    wide = starting_points(PRESETS["wide"], 0.5, 1)[0] | {"method": "mean", "norm_preserving": False, "attn_peak": 0.95}
    fitted, changes = fit_to_space(wide, PRESETS["default"])
    assert fitted["method"] == "mean-projected" and fitted["norm_preserving"] is True
    assert fitted["attn_peak"] == 0.95  # inside the default's (0.4, 1.0)
    assert any(c.startswith("method 'mean'") for c in changes)


@pytest.mark.parametrize(("spec", "message"), [
    ("no-study-name", "--warm-start wants STORAGE_URL#STUDY"),
    ("sqlite:///{tmp}/absent.db#src", "absent.db"),
    ("{source}#nope", "no abliterate study named 'nope'"),
])
def test_a_bad_warm_start_is_one_line_and_writes_nothing(source, tmp_path, capsys, spec, message):
    target = save_tiny(tmp_path / "model", 4)
    spec = spec.format(tmp=tmp_path, source=source["url"])
    capsys.readouterr()  # the model's writing progress
    status, _, err = run(capsys, "search", "--model", target, "--harmful", "demo-harmful", "--harmless", "demo-harmless",
                         "--split", "4,6,6", "--workers", 0, "--storage", f"sqlite:///{tmp_path / 'target.db'}", "--warm-start", spec)
    lines = [line for line in err.strip().splitlines() if not line.startswith("Loading weights")]
    assert status == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "target.db").exists()


def test_parse_source_splits_at_the_last_hash():
    assert parse_source("postgresql+psycopg2://u:p#w@h/db#study") == ("postgresql+psycopg2://u:p#w@h/db", "study")
