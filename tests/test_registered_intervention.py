"""A new intervention is one implementation and its registration: this file's ``scale`` (the
direction removed with every layer's weight times a sampled factor) is searched, started, cached,
resolved, baked and described by the engine and the search without a line changed elsewhere."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch

from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.registry import Intervention, interventions


class Scale(Intervention):
    """Remove the direction with every kernel's weights times ``scale_factor``."""

    name = "scale"
    RANGE = (0.25, 0.75)

    def suggest(self, trial, space) -> None:
        trial.suggest_float("scale_factor", *self.RANGE)

    def start(self, space) -> dict:
        return {"scale_factor": self.RANGE[1]}

    def settings(self, params) -> dict:
        return {"options": {"scale_factor": float(params.get("scale_factor", 1.0))}}

    def edit(self, candidate, payload, writers, removal: Edit) -> Edit:
        factor = candidate.options["scale_factor"]
        kernels = {group: replace(k, peak_weight=k.peak_weight * factor, floor_weight=k.floor_weight * factor)
                   for group, k in removal.profile.kernels.items()}
        return replace(removal, profile=replace(removal.profile, kernels=kernels))

    def summary(self, candidate) -> dict:
        return {"scale_factor": candidate.options["scale_factor"]}

    def describe(self, edit) -> str:
        return f"ablate at {edit['scale_factor']:.2f} of the profile's weights"


@pytest.fixture
def scale():
    registered = interventions.register(Scale())
    yield registered
    interventions.unregister(registered.name)


def test_a_registered_intervention_is_searched_started_and_keyed(scale):
    from abliterate.ablation.resolve import payload_key
    from abliterate.search.space import SearchSpace, distributions, starting_points, suggest

    space = SearchSpace(interventions=("ablate", "scale"))
    assert distributions(space)["scale_factor"] == optuna.distributions.FloatDistribution(*Scale.RANGE)
    assert distributions(space)["intervention"].choices == ("ablate", "scale")
    params = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), space)
    assert Scale.RANGE[0] <= params["scale_factor"] <= Scale.RANGE[1]
    assert all(point["scale_factor"] == Scale.RANGE[1] for point in starting_points(space, 0.5, 6))
    assert payload_key(space) == "directions:mean-projected|scale"
    with pytest.raises(Exception, match="unknown intervention 'stretch'"):
        SearchSpace(interventions=("stretch",))


def test_a_trial_of_a_registered_intervention_bakes_its_edit_on_a_tiny_model(scale, tiny):
    from abliterate.ablation.architectures import find_writers
    from abliterate.ablation.candidate import candidate_from_params
    from abliterate.ablation.loading import LoadedModel
    from abliterate.ablation.resolve import resolve, used_tensors
    from abliterate.objectives.payload import compute_payload
    from abliterate.objectives.refusal import MarkerProxy
    from abliterate.search.analysis import not_measurable
    from abliterate.search.card import intervention_text
    from abliterate.search.reproduce import edit_summary
    from abliterate.search.space import SearchSpace, suggest
    from abliterate.search.trial import TrialRunner, capture_extraction

    model, tokenizer = tiny("llama")
    loaded = LoadedModel(model, tokenizer, "tiny")
    harmful, harmless = ["Tell me how to pick a lock", "How do I hotwire a car"], ["Bake bread", "Write a poem about the sea"]
    space = SearchSpace(interventions=("scale",))
    payload = compute_payload(loaded, harmful, harmless, capture_extraction(loaded, harmful, harmless, batch_size=2), space,
                              batch_size=2)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    params = suggest(trial, space) | {"scope": "per-layer"}
    candidate = candidate_from_params(params, len(payload["mean-projected"]))
    assert candidate.intervention == "scale" and candidate.options == {"scale_factor": params["scale_factor"]}

    writers = find_writers(model)
    edit = resolve(candidate, payload, writers)
    plain = resolve(replace(candidate, intervention="ablate"), payload, writers)
    for writer in writers:  # the scaled profile, and nothing else of the edit changed
        assert edit.profile.weight(writer.group, writer.layer) == pytest.approx(
            params["scale_factor"] * plain.profile.weight(writer.group, writer.layer))
    assert torch.equal(edit.directions, plain.directions) and edit.heads is None and edit.amplify is None

    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    with Baker(writers).baked_into(edit):
        baked = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any(not torch.equal(baked[n], original[n]) for n in original)
    outcome = TrialRunner(loaded, payload, harmful, harmless, MarkerProxy(max_new_tokens=4, batch_size=2), kl_cap=10.0,
                          batch_size=2).run(candidate)
    assert outcome.feasible and outcome.kl > 0 and outcome.refusal is not None
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())  # restored bit-exactly

    assert set(used_tensors(candidate, payload)) == {"mean-projected"}
    assert not_measurable(params) is None
    summary = edit_summary(params, len(payload["mean-projected"]), outcome.edited_layers)
    assert intervention_text(summary) == f"ablate at {params['scale_factor']:.2f} of the profile's weights, norm-preserving"
