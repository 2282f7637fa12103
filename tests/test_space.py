import optuna
import pytest

from search.space import SearchSpace, candidate_from_params, classic_seed, suggest


def test_suggest_then_candidate_round_trip():
    space = SearchSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, space)
        candidate = candidate_from_params(params, num_layers=24)
        assert candidate.method in space.methods and candidate.scope in space.scopes
        assert 0 <= candidate.profile.first_layer <= candidate.profile.last_layer <= 23
        for group in ("attn", "mlp"):
            kernel = candidate.profile.kernels[group]
            assert 0.5 * 23 <= kernel.peak <= 0.9 * 23 and kernel.floor_weight <= kernel.peak_weight
        assert ("direction_index" in params) == (candidate.scope == "global")
        study.tell(trial, 0.0)


def test_candidate_from_params_exact():
    params = classic_seed(SearchSpace()) | {"direction_index": 0.5, "mlp_falloff": 0.25, "first_layer": 0.1}
    candidate = candidate_from_params(params, num_layers=11)
    assert candidate.direction_index == 5.0 and candidate.profile.first_layer == 1 and candidate.profile.last_layer == 10
    mlp = candidate.profile.kernels["mlp"]
    assert (mlp.peak, mlp.peak_weight, mlp.floor_weight, mlp.falloff) == (5.0, 1.0, 1.0, 2.5)
    assert [candidate.profile.weight("mlp", layer) for layer in range(11)] == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]


def test_classic_seed_is_weight_one_over_the_upper_layers():
    candidate = candidate_from_params(classic_seed(SearchSpace()), num_layers=24)
    assert candidate.method == "mean" and candidate.direction_index == pytest.approx(0.6 * 23)
    weights = [candidate.profile.weight("attn", layer) for layer in range(24)]
    assert set(weights) == {1.0} and not candidate.norm_preserving


def test_space_serialises():
    space = SearchSpace(methods=("pca",), peak=(0.6, 0.7))
    assert SearchSpace.from_dict(space.as_dict()) == space
