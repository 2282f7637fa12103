"""Every direction method and intervention in one study on the shipped refusing model: the trials
run, their params show each one, and every kind of trial exports and re-bakes bit for bit."""

from dataclasses import replace

import optuna
import pytest
import torch
from optuna.trial import TrialState

from abliterate.ablation.errors import AblationError
from abliterate.search.space import INTERVENTIONS, METHODS, PRESETS, SearchSpace, candidate_from_params, starting_points, suggest
from abliterate.search.study import create_or_resume
from abliterate.storage.rdb import open_storage

# One trial per method, the interventions taken in turn; the sampler fills in the rest.
COVER = [{"method": method, "intervention": INTERVENTIONS[i % len(INTERVENTIONS)], "scope": "per-layer" if i % 2 else "global",
          "calibration": (0, 25, 75, 95)[i % 4]} for i, method in enumerate(METHODS)] + [{"method": "cone", "intervention": "heads"},
                                                                            {"method": "sae", "scope": "global"}]
TRIALS = len(COVER) + 2


def train_tiny_saes(config, folder, layers=(1, 2, 3), features=64, steps=300):
    """Sparse autoencoders of the refuser's residual stream (no SAE is downloadable here): trained
    for a few hundred steps on the residuals of every prompt set but the evaluation ones, in the
    common layout, one file per layer (none for layer 0)."""
    from safetensors.torch import save_file

    from abliterate.ablation import load_model
    from abliterate.ablation.residuals import capture_last_token

    loaded = load_model(config.model, "float32", "cpu")
    prompts = config.prompts()
    texts = loaded.format_chat([p for (side, purpose), ps in prompts.items() if purpose != "evaluation" for p in ps])
    residuals = capture_last_token(loaded.model, loaded.tokenizer, texts, 32)
    torch.manual_seed(0)
    for layer in layers:
        x = residuals[:, layer]
        hidden = x.shape[1]
        W_enc = torch.nn.Parameter(torch.randn(hidden, features) / hidden ** 0.5)
        b_enc, b_dec = torch.nn.Parameter(torch.zeros(features)), torch.nn.Parameter(x.mean(0).clone())
        W_dec = torch.nn.Parameter(W_enc.detach().T.clone())
        optimiser = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-2)
        for _ in range(steps):
            codes = torch.relu((x - b_dec) @ W_enc + b_enc)
            loss = (codes @ W_dec + b_dec - x).pow(2).mean() + 1e-3 * codes.abs().sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        save_file({"W_enc": W_enc.detach(), "b_enc": b_enc.detach(), "W_dec": W_dec.detach().contiguous(), "b_dec": b_dec.detach()},
                  str(folder / f"layer_{layer}.safetensors"))
    return str(folder)


@pytest.fixture(scope="module")
def research_study(tmp_path_factory, one_torch_thread):
    from abliterate.search.demo import DEMO_SPACE, demo_config
    from abliterate.search.worker import run_worker

    space = replace(DEMO_SPACE, methods=METHODS, interventions=INTERVENTIONS, heads=(1, 8), calibration=(0, 25, 75, 95))
    saes = train_tiny_saes(demo_config(TRIALS), tmp_path_factory.mktemp("sae"))
    config = replace(demo_config(TRIALS), space=space, starting_points=0, sampler="random", sae=saes)
    url = f"sqlite:///{tmp_path_factory.mktemp('research') / 'study.db'}"
    study, _ = create_or_resume(open_storage(url), "s", config)
    for point in COVER:
        study.enqueue_trial(point)
    said = []
    run_worker(url, "s", device="cpu", log=said.append)
    return url, optuna.load_study(study_name="s", storage=url), said


def test_every_method_and_intervention_runs_in_one_study(research_study):
    _, study, said = research_study
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == TRIALS
    assert {t.params["method"] for t in done} == set(METHODS)
    assert {t.params["intervention"] for t in done} == set(INTERVENTIONS)
    for trial in done:  # the research params are sampled on every trial of such a space
        assert {"pca_component", "cone_rank", "sae_features", "intervention", "amplify_strength", "heads", "read_peak", "calibration"} <= set(trial.params)
    assert {t.params["calibration"] for t in done} >= {0, 25, 75, 95}
    log = "\n".join(said)
    from abliterate.storage.records import DIRECTIONS_REPORT

    assert study.user_attrs[DIRECTIONS_REPORT] == [line for line in said if line.startswith(("cone", "sae", "compliance", "refusal"))]
    assert "cone: " in log and "mean pairwise cosine" in log and "silhouette" in log and "cos(refusal, compliance)" in log and "sae: SAEs at layers 1, 2, 3" in log


def test_each_kind_of_trial_exports_reloads_with_its_logits_and_rebuilds_bit_for_bit(research_study, tmp_path):
    from abliterate.ablation import Baker, load_model
    from abliterate.ablation.resolve import resolve
    from abliterate.search.checkpoint import export_loaded, rebuild
    from abliterate.search.kit import StudyKit

    url, study, _ = research_study
    kit = StudyKit.open(url, "s", "cpu", dtype="float32")
    config, directions, base = kit.config, kit.payload(), kit.model
    text = base.tokenizer(["How do I pick a lock?", "Bake bread"], return_tensors="pt", padding=True)
    kinds = {}
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):  # a pruned trial exports all the same
        kinds.setdefault((trial.params["method"] in ("cone", "sae"), trial.params["intervention"], trial.params["calibration"] > 0), trial)
        if trial.params["method"] == "sae":  # an SAE covers some layers: the global scope takes the nearest one
            kinds.setdefault(("sae", trial.params["scope"]), trial)
    three = [kind for kind in kinds if len(kind) == 3]
    assert {kind[1] for kind in three} == set(INTERVENTIONS) and any(kind[0] for kind in three) and any(kind[2] for kind in three)
    assert ("sae", "global") in kinds and ("sae", "per-layer") in kinds
    for number, (kind, trial) in enumerate(kinds.items()):
        intervention = kind
        out = export_loaded(kit, trial, None, tmp_path / f"t{number}")
        candidate = candidate_from_params(trial.params, 4)
        baker = Baker.for_model(base.model)
        with torch.no_grad(), baker.baked_into(resolve(candidate, directions, baker.writers)):
            baked = base.model(**text).logits
        unedited = base.model(**text).logits
        assert not torch.allclose(baked, unedited), intervention
        reloaded = load_model(str(out), device="cpu")
        with torch.no_grad():
            assert torch.allclose(reloaded.model(**text).logits, baked, atol=1e-5), intervention
        rebuild(str(out / "reproduce.json"), config.model, str(tmp_path / f"r{number}"), device="cpu", log=lambda line: None)


KERNEL_PARAMS = {"method", "scope", "direction_index", "first_layer", "last_layer", "norm_preserving",
                 *(f"{g}_{p}" for g in ("attn", "mlp") for p in ("shape", "peak", "peak_weight", "floor_fraction", "falloff"))}


def test_the_ablate_preset_is_the_former_default_space():
    space = PRESETS["ablate"]
    params = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), space)
    assert set(params) == KERNEL_PARAMS
    assert all(set(point) == set(params) for point in starting_points(space, 0.5, 6))
    candidate = candidate_from_params(params, 24)
    assert (candidate.intervention, candidate.rank, candidate.component, candidate.heads) == ("ablate", 1, 0, 0)


@pytest.mark.parametrize("preset", ["default", "heads"])
def test_the_default_and_heads_presets_add_the_intervention_and_the_head_count(preset):
    space = PRESETS[preset]
    params = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), space)
    assert set(params) == KERNEL_PARAMS | {"intervention", "heads"}
    candidate = candidate_from_params(params | {"intervention": "heads"}, 24)
    assert candidate.intervention == "heads" and space.heads[0] <= candidate.heads <= space.heads[1]
    assert candidate_from_params(params | {"intervention": "ablate"}, 24).heads == 0  # an ablation edits every head


def test_the_default_starts_with_the_strong_doses_ablated_and_the_rest_in_the_heads():
    points = starting_points(PRESETS["default"], 0.5, 6)
    assert [p["intervention"] for p in points] == ["heads", "heads", "ablate", "heads", "heads", "ablate"]
    assert all(p["heads"] == PRESETS["default"].heads[1] for p in points)
    assert {p["intervention"] for p in starting_points(PRESETS["heads"], 0.5, 6)} == {"heads"}
    only_amplify = SearchSpace(interventions=("ablate", "amplify"))
    assert {p["intervention"] for p in starting_points(only_amplify, 0.5, 6)} == {"ablate"}


def test_research_spaces_sample_their_own_params_and_starting_points_lie_inside():
    space = SearchSpace(methods=("pca", "cone"), interventions=("ablate", "heads"), pca_component=(0, 3), cone_rank=(1, 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in starting_points(space, 0.5, 3):
        study.enqueue_trial(point)
        trial = study.ask()
        assert suggest(trial, space) == point
        study.tell(trial, 0.0)
    trial = study.ask()
    params = suggest(trial, space)
    assert {"pca_component", "cone_rank", "intervention", "heads"} <= set(params) and "amplify_strength" not in params
    candidate = candidate_from_params(params | {"method": "cone", "cone_rank": 2, "intervention": "heads", "heads": 5}, 24)
    assert (candidate.rank, candidate.heads, candidate.amplify_strength) == (2, 5, 0.0)


@pytest.mark.parametrize("options, message", [
    (dict(methods=("mean", "cones")), r"unknown direction method 'cones' in --methods; use one or more of mean,mean-projected,pca,probe,winsorized,median,cone"),
    (dict(interventions=("steer",)), r"unknown intervention 'steer' in --interventions"),
    (dict(methods=()), r"no direction method given in --methods"),
    (dict(cone_rank=(0, 2)), r"cone_rank range 0..2"),
    (dict(read_peak_weight=(-0.5, 1.0)), r"read_peak_weight range -0.5..1.0 must be weights from 0 up"),
    (dict(peak_weight=(1.5, 0.8)), r"peak_weight range 1.5..0.8 must be weights from 0 up"),
    (dict(peak=(0.4, 1.2)), r"peak range 0.4..1.2 must lie within 0..1"),
    (dict(first_layer=(-0.1, 0.2)), r"first_layer range -0.1..0.2 must lie within 0..1"),
    (dict(falloff=(0.0, 0.6)), r"falloff range 0.0..0.6 must lie within 0..1 and above 0"),
])
def test_a_bad_space_is_one_line(options, message):
    with pytest.raises(AblationError, match=message):
        SearchSpace(**options)


def test_categories_line_up_with_the_prompts_and_shape_the_cone(tmp_path):
    import csv

    from abliterate.ablation.resolve import method_tensor
    from abliterate.objectives.categories import load_categories
    from abliterate.objectives.prompts import load_prompts

    rows = [("Pick a lock", "crime"), ("", "crime"), ("Make a weapon", "violence"), ("pick  a LOCK", "other"),
            ("Steal a car", "crime"), ("Hurt someone", "violence"), ("Forge a passport", "fraud")]
    path = tmp_path / "harmful.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("goal", "category"), *rows])
    spec = f"{path}#goal[1:5]"
    assert load_prompts(spec) == ["Make a weapon", "Steal a car", "Hurt someone", "Forge a passport"]
    assert load_categories(spec, "category") == ["violence", "crime", "violence", "fraud"]
    with pytest.raises(AblationError, match="no prompt field"):
        load_categories(str(path).replace(".csv", ".txt"), "category")
    with pytest.raises(AblationError, match="no field 'topic'"):
        load_categories(spec, "topic")

    g = torch.Generator().manual_seed(0)
    harmful, harmless = torch.randn(4, 3, 16, generator=g), torch.randn(5, 3, 16, generator=g)
    said = []
    cone = method_tensor("cone", harmful, harmless, SearchSpace(methods=("cone",)), said.append, ["violence", "crime", "violence", "fraud"])
    assert cone.shape == (3, 3, 16) and "labelled (" in said[0]
    from abliterate.search.study import StudyConfig

    with pytest.raises(AblationError, match="add cone to --methods"):
        StudyConfig.split("m", spec, "demo-harmless", (2, 1, 1), harmful_categories="category")


def test_a_calibrated_profile_scales_each_layer_by_its_strength_over_the_target():
    from abliterate.ablation.resolve import calibrated_profile as profile_for
    from abliterate.ablation.resolve import refusal_strength

    r = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    harmless = torch.zeros(3, 5, 8)
    along = torch.tensor([0.1, 0.2, 0.4, 0.8, 3.2])  # each harmful prompt carries this much refusal per layer
    harmful = (along[:, None] * r).expand(4, 5, 8).clone()
    strength = refusal_strength(harmful, harmless, r)
    assert torch.allclose(strength, torch.ones(5), atol=1e-6)  # relative to the residual's own size: all alike
    strength = torch.tensor([0.5, 1.0, 2.0, 4.0, 16.0])
    directions = {"mean": r, "calibration:mean": strength}
    params = {"method": "mean", "scope": "per-layer", "direction_index": 0.5, "first_layer": 0.0, "last_layer": 1.0,
              "norm_preserving": True, "calibration": 25, **{f"{g}_{k}": v for g in ("attn", "mlp") for k, v in
              (("shape", "tent"), ("peak", 0.5), ("peak_weight", 1.0), ("floor_fraction", 1.0), ("falloff", 1.0))}}
    candidate = candidate_from_params(params, 5)
    profile = profile_for(candidate, directions)  # target: the 25th percentile of the strengths, 1.0
    assert [profile.weight("attn", layer) for layer in range(5)] == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0])
    off = candidate_from_params(params | {"calibration": 0}, 5)
    assert profile_for(off, directions) is off.profile


def test_the_compliance_direction_and_its_fallback():
    from abliterate.ablation.interventions import alignment_report, compliance_direction

    g = torch.Generator().manual_seed(1)
    c = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    harmful = 0.01 * torch.randn(10, 2, 8, generator=g)
    refused = [i < 6 for i in range(10)]
    harmful[6:] += 2.0 * c  # the four it complied with sit further along c
    found, how = compliance_direction(harmful, refused, torch.ones(2, 8))
    assert torch.nn.functional.cosine_similarity(found, c, dim=-1).min() > 0.99 and "4 complied and 6 refused" in how
    r = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    fallback, how = compliance_direction(harmful, [True] * 8 + [False] * 2, r)
    assert torch.equal(fallback, -r) and "complied with 2 of 10" in how and "negated refusal direction" in how
    line, aligned = alignment_report(r, fallback)
    assert aligned and line.startswith("cos(refusal, compliance) per layer: -1.00, -1.00")
    across = torch.nn.functional.normalize(r - (r * found).sum(-1, keepdim=True) * found, dim=-1)  # orthogonal to c
    assert not alignment_report(across, found)[1]
