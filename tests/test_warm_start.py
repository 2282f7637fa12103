"""Warm start: another study's feasible front enqueued as the first trials, on a model of another depth."""

from __future__ import annotations

import pytest

from abliterate.ablation.errors import AblationError
from abliterate.search.space import PRESETS, SearchSpace, candidate_from_params, distributions, starting_points
from abliterate.search.warm import fit_to_space, parse_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *args):
    from abliterate.search.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def save_tiny(folder, layers: int):
    from transformers import AutoModelForCausalLM

    from fixtures.tiny import tiny_config, tiny_tokenizer

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

    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage

    folder = tmp_path_factory.mktemp("source")
    config = StudyConfig.split(str(save_tiny(folder / "model", 4)), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=3, seed=1)
    url = f"sqlite:///{folder / 'source.db'}"
    create_or_resume(open_storage(url), "src", config)
    study = optuna.load_study(study_name="src", storage=url)
    points = starting_points(config.space, 0.5, 3)
    for params, values, feasible in zip(points, ([0.1, 0.5], [0.6, 0.05], [0.0, 3.0]), (True, True, False)):
        study.enqueue_trial(params)
        trial = study.ask()
        from abliterate.search.space import suggest

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
    fitted, fitting = fit_to_space(wide, PRESETS["default"])
    assert fitted["method"] == "mean-projected" and fitted["norm_preserving"] is True
    assert fitted["attn_peak"] == 0.95  # inside the default's (0.4, 1.0)
    assert any(c.startswith("method 'mean'") for c in fitting["changed"])
    assert fitting["dropped"] == [] and fitting["sampled"] == []


# A research space on both sides: every option it samples is carried.
SOURCE_SPACE = SearchSpace(methods=("mean-projected", "pca"), interventions=("ablate", "heads", "amplify"), calibration=(0, 75))
TARGET_SPACE = SearchSpace(methods=("pca", "probe"), interventions=("ablate", "heads"), heads=(1, 8), pca_component=(0, 1),
                           calibration=(25, 75, 95))
# Two front trials of the source: (what they chose beyond a starting point's positions, objectives).
SOURCE_TRIALS = (({"method": "pca", "pca_component": 2, "intervention": "heads", "heads": 30, "amplify_strength": 0.3,
                   "calibration": 75}, [0.1, 0.5]),
                 ({"method": "mean-projected", "pca_component": 0, "intervention": "amplify", "heads": 5, "amplify_strength": 0.4,
                   "calibration": 0}, [0.6, 0.05]))


def test_params_outside_the_default_space_are_carried_held_inside_and_the_rest_left_to_the_sampler():
    point = starting_points(SOURCE_SPACE, 0.5, 1)[0] | SOURCE_TRIALS[0][0]
    fitted, fitting = fit_to_space(point, TARGET_SPACE)
    assert {k: fitted[k] for k in ("method", "pca_component", "intervention", "heads", "calibration")} == \
        {"method": "pca", "pca_component": 1, "intervention": "heads", "heads": 8, "calibration": 75}
    assert "amplify_strength" not in fitted and fitting["dropped"] == ["amplify_strength"]
    assert sorted(fitting["changed"]) == ["heads 30 -> 8", "pca_component 2 -> 1"]
    # A trial of the ablate-only space: its edit was an uncalibrated ablation, so it is carried as
    # one; the heads count it never searched is the sampler's.
    plain = starting_points(SearchSpace(interventions=("ablate",)), 0.5, 1)[0]
    fitted, fitting = fit_to_space(plain, SearchSpace(interventions=("heads", "ablate"), calibration=(0, 95)))
    assert fitted["intervention"] == "ablate" and fitted["calibration"] == 0
    assert "heads" not in fitted and fitting["sampled"] == ["heads"] and fitting["changed"] == fitting["dropped"] == []
    # A percentile the new space does not offer becomes the nearest one; an integer is rounded, then clipped.
    fitted, fitting = fit_to_space(point | {"calibration": 80, "pca_component": 0.6}, TARGET_SPACE)
    assert fitted["calibration"] == 75 and fitted["pca_component"] == 1
    del plain["method"]
    with pytest.raises(AblationError, match="lacks the parameter 'method'"):
        fit_to_space(plain, SearchSpace())


@pytest.fixture(scope="module")
def research_source(tmp_path_factory):
    """A study of a 4-layer model in a research space whose front is the two SOURCE_TRIALS."""
    import optuna

    from abliterate.search.space import suggest
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage

    folder = tmp_path_factory.mktemp("research-source")
    config = StudyConfig.split(str(save_tiny(folder / "model", 4)), "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=2, seed=1,
                               space=SOURCE_SPACE)
    url = f"sqlite:///{folder / 'source.db'}"
    create_or_resume(open_storage(url), "rich", config)
    study = optuna.load_study(study_name="rich", storage=url)
    points = []
    for point, (chosen, values) in zip(starting_points(SOURCE_SPACE, 0.5, 2), SOURCE_TRIALS):
        points.append(point | chosen)
        study.enqueue_trial(points[-1])
        trial = study.ask()
        suggest(trial, SOURCE_SPACE)
        trial.set_user_attr("feasible", True)
        study.tell(trial, values)
    return {"url": url, "front": points}


def test_a_research_front_lands_on_a_deeper_model_with_every_option_it_can_keep(research_source, tmp_path, capsys):
    import optuna

    target = save_tiny(tmp_path / "deeper", 7)
    study_file = tmp_path / "study.toml"
    study_file.write_text(f"""model = "{target}"
harmful = "demo-harmful"
harmless = "demo-harmless"
split = [4, 6, 6]

[space]
methods = ["pca", "probe"]
interventions = ["ablate", "heads"]
heads = [1, 8]
pca_component = [0, 1]
calibration = [25, 75, 95]
""")
    url = f"sqlite:///{tmp_path / 'target.db'}"
    status, out, err = run(capsys, "search", "--config", study_file, "--workers", 0, "--storage", url, "--study", "dst",
                           "--warm-start", f"{research_source['url']}#rich")
    assert status == 0, err
    assert "warm start: 2 trial(s) of 'rich''s feasible front enqueued first" in out
    assert out.count("dropped what this study's space does not search: amplify_strength") == 1  # one line for the front
    study = optuna.load_study(study_name="dst", storage=url)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    enqueued = [t.system_attrs["fixed_params"] for t in waiting]
    chosen = ("method", "pca_component", "intervention", "heads", "calibration")
    assert [{k: e[k] for k in chosen} for e in enqueued] == [
        {"method": "pca", "pca_component": 1, "intervention": "heads", "heads": 8, "calibration": 75},
        {"method": "pca", "pca_component": 0, "intervention": "ablate", "heads": 5, "calibration": 25}]
    assert all(set(e) == set(distributions(TARGET_SPACE)) for e in enqueued)  # every param of the new space, no other
    assert waiting[1].user_attrs["warm_start"]["changed"] == ["method 'mean-projected' -> 'pca'", "intervention 'amplify' -> 'ablate'",
                                                              "calibration 0 -> 25"]
    for params, carried in zip(research_source["front"], enqueued):
        shallow, deep = candidate_from_params(params, 4), candidate_from_params(carried, 7)
        assert deep.direction_index / 6 == pytest.approx(shallow.direction_index / 3)
        for group in ("attn", "mlp"):
            assert deep.profile.kernels[group].peak / 6 == pytest.approx(shallow.profile.kernels[group].peak / 3)
            assert deep.profile.kernels[group].falloff / 6 == pytest.approx(shallow.profile.kernels[group].falloff / 3)
    # The first worker's trial runs exactly the carried point (the sampler fills nothing in).
    trial = study.ask()
    from abliterate.search.space import suggest

    assert suggest(trial, TARGET_SPACE) == enqueued[0]


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
