import optuna
import pytest
import torch

from abliterate.ablation.errors import AblationError
from abliterate.search.space import GROUPS, PRESETS, SearchSpace, candidate_from_params, classic_seed, suggest
from abliterate.search.trial import strongest_layer


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_suggest_then_candidate_round_trip(preset):
    space = PRESETS[preset]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, space)
        candidate = candidate_from_params(params, num_layers=24)
        assert candidate.method in space.methods and candidate.scope in space.scopes
        assert 0 <= candidate.profile.first_layer <= candidate.profile.last_layer <= 23
        for group in ("attn", "mlp"):
            kernel = candidate.profile.kernels[group]
            assert space.peak[0] * 23 <= kernel.peak <= space.peak[1] * 23 and kernel.floor_weight <= kernel.peak_weight
        assert "direction_index" in params  # sampled on every trial, so multivariate TPE models it
        study.tell(trial, 0.0)


def test_default_space_fixes_method_layers_shape_and_norm_preservation():
    space = SearchSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    candidates = []
    for _ in range(8):
        trial = study.ask()
        candidates.append(candidate_from_params(suggest(trial, space), num_layers=24))
        study.tell(trial, 0.0)
    assert {(c.method, c.norm_preserving, c.profile.first_layer, c.profile.last_layer) for c in candidates} == {("mean-projected", True, 0, 23)}
    assert {c.profile.kernels["attn"].shape for c in candidates} == {"tent"}
    free = {name for name, d in study.trials[0].distributions.items() if not d.single()}
    assert len(free) == 12 and {"scope", "direction_index", "intervention", "heads"} <= free


def test_candidate_from_params_exact():
    params = classic_seed(PRESETS["wide"]) | {"direction_index": 0.5, "mlp_falloff": 0.25, "first_layer": 0.1}
    candidate = candidate_from_params(params, num_layers=11)
    assert candidate.direction_index == 5.0 and candidate.profile.first_layer == 1 and candidate.profile.last_layer == 10
    mlp = candidate.profile.kernels["mlp"]
    assert (mlp.peak, mlp.peak_weight, mlp.floor_weight, mlp.falloff) == (6.0, 1.0, 1.0, 2.5)
    assert [candidate.profile.weight("mlp", layer) for layer in range(11)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_classic_seed_is_weight_one_over_the_upper_layers():
    candidate = candidate_from_params(classic_seed(PRESETS["wide"]), num_layers=24)
    assert candidate.method == "mean" and candidate.direction_index == pytest.approx(0.6 * 23)
    weights = [candidate.profile.weight("attn", layer) for layer in range(24)]
    assert set(weights) == {1.0} and not candidate.norm_preserving


def test_space_serialises():
    space = SearchSpace(methods=("pca",), peak=(0.6, 0.7))
    assert SearchSpace.from_dict(space.as_dict()) == space


def test_dominating_point_is_the_least_refusal_at_no_more_kl():
    from abliterate.search.front import dominating_point

    points = [(0.5, 0.01), (0.2, 0.05), (0.1, 0.3), (0.2, 0.02)]
    assert dominating_point(points, 0.005) is None  # nothing has so little KL
    assert dominating_point(points, 0.01) == 0
    assert dominating_point(points, 0.04) == 3  # 0.2 at KL 0.02 beats 0.5 at 0.01
    assert dominating_point(points, 0.05) == 3  # ties on refusal go to the lower KL
    assert dominating_point(points, 1.0) == 2


def test_a_screen_rules_out_only_past_its_margin_and_at_no_less_kl():
    from abliterate.search.front import screen_dominates

    assert screen_dominates(0.01, 0.5, 0.01, 0.5, 0.0)  # no margin: a tie rules out, as dominance does
    assert not screen_dominates(0.01, 0.5, 0.01, 0.51, 0.03)  # 2 % higher: inside a 3 % margin
    assert screen_dominates(0.01, 0.5, 0.02, 0.515, 0.03)  # 3 % higher, more KL: ruled out
    assert not screen_dominates(0.02, 0.5, 0.01, 0.9, 0.03)  # the ruling trial has more KL
    assert screen_dominates(0.01, 0.005, 0.01, 0.006, 0.03) and not screen_dominates(0.01, 0.5, 0.01, 0.501, 0.03)
    # relative: a 0.001 gap rules out at a small model's scale, not at a large one's


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_starting_points_lie_in_the_space_and_differ(preset):
    from abliterate.search.space import starting_points

    space = PRESETS[preset]
    points = starting_points(space, strongest=0.7, count=6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in points:
        study.enqueue_trial(point)
        trial = study.ask()
        assert suggest(trial, space) == point  # every value is one the space can sample
        study.tell(trial, 0.0)
    assert len({tuple(sorted(p.items())) for p in points}) == 6
    top = space.direction_index[1]
    assert [p["direction_index"] for p in points] == pytest.approx([min(d, top) for d in (0.8, 0.8, 0.9, 0.8, 0.8, 0.7)])
    weights = [p["attn_peak_weight"] for p in points]
    assert weights[3] < weights[1] < weights[4] < weights[0] == weights[2]  # a ladder of doses
    deep = starting_points(space, strongest=0.95, count=6)
    assert deep[0]["scope"] == "global" and deep[0]["direction_index"] == top  # held inside the range
    assert deep[5]["direction_index"] == pytest.approx(min(0.95, top))
    assert len(starting_points(space, 0.7, 3)) == 3


def _residuals(gap: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmful and harmless residuals [3, L, 4] whose class means differ by ``gap[l]`` at layer l,
    over harmless residuals of norm 2 everywhere: the separation of layer l is gap[l] / 2."""
    harmless = torch.ones(3, len(gap), 4)
    harmful = harmless.clone()
    harmful[:, :, 0] += torch.tensor(gap)
    return harmful, harmless


def test_the_strongest_layer_is_looked_for_below_the_last_fifth():
    # separation grows to the top layer; the last fifth (layers 8 and 9 of 10) is not looked at
    assert strongest_layer(*_residuals([0, 1, 2, 3, 4, 5, 6, 5, 8, 9])) == 6 / 9
    assert strongest_layer(*_residuals([0, 1, 7, 3, 4, 5, 6, 5, 1, 0])) == 2 / 9
    assert strongest_layer(*_residuals([0, 1, 2, 3, 9])) == 3 / 4  # int(5 * 0.8) = 4 layers looked at
    assert strongest_layer(*_residuals([5])) == 0.0  # a one-layer stack keeps its layer


def test_layers_write_the_widening_of_the_gap_along_the_direction():
    from abliterate.ablation.directions import writes_along

    harmful, harmless = _residuals([1, 3, 2, 6])
    assert writes_along(harmful, harmless, 3).tolist() == [1, 2, 0, 4]  # layer 2 narrows it: writes nothing
    # along a direction the gap does not point in, nothing is written
    harmful[:, 1:, 1] += torch.tensor([0.0, 0.0, 5.0])  # the last layer's difference, so the direction, is (6, 5)
    gap = torch.tensor([6.0, 18, 12, 61]) / 61**0.5
    assert writes_along(harmful, harmless, 3) == pytest.approx(torch.diff(gap, prepend=torch.zeros(1)).clamp_min(0))
    with pytest.raises(AblationError, match="layer 4 is outside the stack of 4 layers"):
        writes_along(harmful, harmless, 4)


def test_the_writing_kernel_is_the_mean_and_twice_the_spread_of_the_writes():
    from abliterate.search.trial import writing_kernel

    # writes 0, 0, 2, 0, 2 over positions 0, 1/4, 1/2, 3/4, 1: mean 3/4, standard deviation 1/4
    assert writing_kernel(*_residuals([0, 0, 2, 2, 4]), strongest=1.0) == pytest.approx((0.75, 0.5))
    # all written by one layer: no spread
    assert writing_kernel(*_residuals([0, 3, 3, 3, 3]), strongest=0.5) == pytest.approx((0.25, 0.0))
    assert writing_kernel(*_residuals([0, 0, 0]), strongest=0.5) is None  # no gap, nothing written


def test_measured_starts_move_every_kernel_and_keep_the_doses():
    from abliterate.search.space import starting_points

    space = PRESETS["default"]
    designed = starting_points(space, 0.7, 6)
    placed = starting_points(space, 0.7, 6, writing=(0.8, 0.2))
    for before, after in zip(designed, placed):
        for group in GROUPS:
            assert after[f"{group}_peak"] == 0.8
            # the ladder's falloffs keep their ratios to the strong dose's (0.4), held inside the space
            assert after[f"{group}_falloff"] == pytest.approx(max(0.2 * before[f"{group}_falloff"] / 0.4, space.falloff[0]))
        assert {k: v for k, v in after.items() if not k.endswith(("_peak", "_falloff"))} == \
            {k: v for k, v in before.items() if not k.endswith(("_peak", "_falloff"))}
    low = starting_points(space, 0.7, 1, writing=(0.1, 0.0))[0]
    assert low["attn_peak"] == space.peak[0] and low["attn_falloff"] == space.falloff[0]  # held inside the space
