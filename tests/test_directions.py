"""Tests for ablation.directions: planted directions are recovered, contracts hold."""

from __future__ import annotations

import math

import pytest
import torch

from abliterate.ablation.directions import (
    WINSOR_QUANTILE,
    ProbeResult,
    interpolate,
    linear_probe,
    mean_difference,
    median_difference,
    principal_components,
    winsorize,
    winsorized_difference,
)
from abliterate.ablation.errors import AblationError

LAYERS = 3
HIDDEN = 32
PROMPTS = 64


def _cosines(directions: torch.Tensor, planted: torch.Tensor) -> torch.Tensor:
    """Cosine per layer between [L, H] directions and [L, H] planted directions."""
    return torch.nn.functional.cosine_similarity(directions, planted, dim=-1)


@pytest.fixture(scope="module")
def planted():
    """Residuals where harmful = offset + noise + alpha * d (alpha in [2, 4]), harmless = offset + noise."""
    generator = torch.Generator().manual_seed(1234)
    direction = torch.randn(LAYERS, HIDDEN, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    # A large shared offset, as real residuals have; it must not leak into any direction.
    offset = 5.0 * torch.randn(LAYERS, HIDDEN, generator=generator)
    alpha = 2.0 + 2.0 * torch.rand(PROMPTS, 1, 1, generator=generator)
    harmful = offset + 0.2 * torch.randn(PROMPTS, LAYERS, HIDDEN, generator=generator) + alpha * direction
    harmless = offset + 0.2 * torch.randn(PROMPTS, LAYERS, HIDDEN, generator=generator)
    return harmful, harmless, direction


def test_mean_difference_recovers_planted_direction(planted):
    harmful, harmless, direction = planted
    found = mean_difference(harmful, harmless)
    assert found.shape == (LAYERS, HIDDEN)
    assert found.dtype == torch.float32
    assert torch.allclose(found.norm(dim=-1), torch.ones(LAYERS), atol=1e-5)
    assert (_cosines(found, direction) > 0.99).all()


def test_principal_components_recover_planted_direction(planted):
    harmful, harmless, direction = planted
    found = principal_components(harmful, harmless, k=1)
    assert found.shape == (1, LAYERS, HIDDEN)
    assert found.dtype == torch.float32
    # Signed cosine: the sign convention must point the component toward harmful.
    assert (_cosines(found[0], direction) > 0.99).all()


def test_linear_probe_recovers_planted_direction(planted):
    harmful, harmless, direction = planted
    result = linear_probe(harmful, harmless, folds=5, seed=0)
    assert isinstance(result, ProbeResult)
    assert result.directions.shape == (LAYERS, HIDDEN)
    assert result.directions.dtype == torch.float32
    assert result.accuracy.shape == (LAYERS,)
    assert torch.allclose(result.directions.norm(dim=-1), torch.ones(LAYERS), atol=1e-5)
    assert (_cosines(result.directions, direction) > 0.99).all()
    assert (result.accuracy > 0.95).all()


def test_linear_probe_accuracy_is_chance_without_signal():
    generator = torch.Generator().manual_seed(7)
    harmful = torch.randn(40, 2, 8, generator=generator)
    harmless = torch.randn(40, 2, 8, generator=generator)
    result = linear_probe(harmful, harmless, folds=4)
    assert (result.accuracy < 0.8).all()


def _tiny_pair() -> tuple[torch.Tensor, torch.Tensor]:
    # Layer 0: harmless mean (1, 0, 0), harmful mean (2, 1, 0), difference (1, 1, 0).
    # Layer 1: harmless mean (1, 1, 0), harmful mean (3, 1, 1), difference (2, 0, 1).
    harmful = torch.tensor(
        [
            [[2.0, 2.0, 0.0], [3.0, 1.0, 2.0]],
            [[2.0, 0.0, 0.0], [3.0, 1.0, 0.0]],
        ]
    )
    harmless = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    return harmful, harmless


def test_mean_difference_matches_hand_computation():
    harmful, harmless = _tiny_pair()
    expected = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    assert torch.allclose(mean_difference(harmful, harmless), expected, atol=1e-6)


def test_orthogonalized_mean_difference_matches_hand_computation():
    harmful, harmless = _tiny_pair()
    # Layer 0: (1, 1, 0) minus its part along (1, 0, 0) is (0, 1, 0).
    # Layer 1: (2, 0, 1) . unit(1, 1, 0) = sqrt(2), so the part is (1, 1, 0) and the rest (1, -1, 1).
    expected = torch.tensor([[0.0, 1.0, 0.0], [1.0 / math.sqrt(3), -1.0 / math.sqrt(3), 1.0 / math.sqrt(3)]])
    found = mean_difference(harmful, harmless, orthogonalize=True)
    assert torch.allclose(found, expected, atol=1e-6)


def test_orthogonalized_direction_has_zero_dot_with_harmless_mean(planted):
    harmful, harmless, _ = planted
    found = mean_difference(harmful, harmless, orthogonalize=True)
    harmless_mean = harmless.mean(dim=0)
    dots = (found * harmless_mean / harmless_mean.norm(dim=-1, keepdim=True)).sum(dim=-1)
    assert (dots.abs() < 1e-5).all()
    # The planted offset is far from orthogonal to d, so the plain direction does have a dot.
    plain = mean_difference(harmful, harmless)
    assert (plain * harmless_mean).sum(dim=-1).abs().max() > 1e-2


def test_principal_components_are_orthonormal_and_signed(planted):
    harmful, harmless, direction = planted
    generator = torch.Generator().manual_seed(99)
    second = torch.randn(LAYERS, HIDDEN, generator=generator)
    second = second - (second * direction).sum(-1, keepdim=True) * direction
    second = second / second.norm(dim=-1, keepdim=True)
    beta = 0.5 + torch.rand(PROMPTS, 1, 1, generator=generator)
    harmful = harmful + beta * second

    for a, b in ((harmful, harmless), (harmless, harmful)):
        components = principal_components(a, b, k=2)
        assert components.shape == (2, LAYERS, HIDDEN)
        gram = torch.einsum("klh,jlh->lkj", components, components)
        assert torch.allclose(gram, torch.eye(2).expand(LAYERS, 2, 2), atol=1e-5)
        reference = a.mean(dim=0) - b.mean(dim=0)
        # Swapping the inputs negates the differences but not their singular vectors, so a
        # missing sign flip fails one of the two orientations.
        assert ((components * reference).sum(dim=-1) >= -1e-6).all()


def test_principal_components_reject_bad_k(planted):
    harmful, harmless, _ = planted
    with pytest.raises(AblationError):
        principal_components(harmful, harmless, k=0)
    with pytest.raises(AblationError):
        principal_components(harmful[:3], harmless, k=4)
    # Pairs are limited by the smaller set.
    with pytest.raises(AblationError):
        principal_components(harmful, harmless[:2], k=3)


def test_interpolate_is_exact_at_integer_indices():
    generator = torch.Generator().manual_seed(3)
    directions = torch.randn(4, 6, generator=generator)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    for layer in range(4):
        assert torch.allclose(interpolate(directions, layer), directions[layer], atol=1e-6)
        assert torch.allclose(interpolate(directions, float(layer)), directions[layer], atol=1e-6)


def test_interpolate_midpoint_of_orthogonal_directions():
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2.0)
    found = interpolate(directions, 0.5)
    assert found.shape == (3,)
    assert torch.allclose(found, expected, atol=1e-6)
    quarter = interpolate(directions, 0.25)
    assert torch.allclose(quarter, torch.tensor([3.0, 1.0, 0.0]) / math.sqrt(10.0), atol=1e-6)


@pytest.mark.parametrize("index", [-0.01, 1.01, 2.0, float("nan")])
def test_interpolate_rejects_out_of_range(index):
    directions = torch.eye(2)
    with pytest.raises(AblationError):
        interpolate(directions, index)


def test_interpolate_rejects_cancelling_neighbours():
    directions = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(AblationError):
        interpolate(directions, 0.5)


_ESTIMATORS = [
    lambda a, b: mean_difference(a, b),
    lambda a, b: mean_difference(a, b, orthogonalize=True),
    lambda a, b: principal_components(a, b, k=1),
    lambda a, b: linear_probe(a, b, folds=2),
    winsorized_difference,
    median_difference,
]
_NAMES = ["mean", "projected", "pca", "probe", "winsorized", "median"]


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_NAMES)
@pytest.mark.parametrize(
    "harmless_shape",
    [(8, 3, 4), (8, 2, 5), (8, 2, 4, 1), (8, 8)],
    ids=["layers", "hidden", "4d", "2d"],
)
def test_mismatched_shapes_raise(estimator, harmless_shape):
    harmful = torch.randn(8, 2, 4)
    harmless = torch.randn(*harmless_shape)
    with pytest.raises(AblationError):
        estimator(harmful, harmless)


@pytest.mark.parametrize("estimator", _ESTIMATORS, ids=_NAMES)
def test_empty_residuals_raise(estimator):
    with pytest.raises(AblationError):
        estimator(torch.randn(0, 2, 4), torch.randn(8, 2, 4))


def test_linear_probe_needs_folds_samples_per_class():
    harmful = torch.randn(4, 2, 4)
    harmless = torch.randn(10, 2, 4)
    with pytest.raises(AblationError):
        linear_probe(harmful, harmless, folds=5)
    with pytest.raises(AblationError):
        linear_probe(harmless, harmful, folds=5)
    with pytest.raises(AblationError):
        linear_probe(harmless, harmless, folds=1)


def test_winsorize_clips_each_coordinate_to_its_own_quantiles():
    # Five prompts, one layer, two coordinates; at q = 0.25 the quantiles fall on the 2nd and 4th values.
    column = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])
    residuals = torch.stack([column, -column], dim=1).unsqueeze(1)  # [5, 1, 2]
    clipped = winsorize(residuals, 0.25)
    assert torch.equal(clipped[:, 0, 0], torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]))
    assert torch.equal(clipped[:, 0, 1], torch.tensor([-1.0, -1.0, -2.0, -3.0, -3.0]))
    with pytest.raises(AblationError, match="quantile"):
        winsorize(residuals, 0.5)


def test_winsorized_at_zero_is_the_projected_mean_difference(planted):
    harmful, harmless, _ = planted
    assert torch.equal(winsorized_difference(harmful, harmless, quantile=0.0), mean_difference(harmful, harmless, orthogonalize=True))


def test_median_difference_matches_hand_computation():
    # Even counts: the median is the mean of the two middle values, whatever the order.
    harmful = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[2.0, 6.0, 0.0]], [[8.0, 0.0, 0.0]]])
    harmless = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 0.0, 3.0]]])
    # Medians (3, 1, 0) and (0, 0, 2); the difference (3, 1, -2) loses its part along (0, 0, 1).
    expected = torch.tensor([[3.0, 1.0, 0.0]]) / math.sqrt(10.0)
    assert torch.allclose(median_difference(harmful, harmless), expected, atol=1e-6)
    assert torch.equal(median_difference(harmful.flip(0), harmless.flip(0)), median_difference(harmful, harmless))


def test_robust_estimators_hold_the_planted_direction_against_an_outlier_prompt(planted):
    """One harmful prompt far out along another direction swings the projected mean difference;
    the winsorized and median estimators keep what it finds without that prompt."""
    harmful, harmless, direction = planted
    clean = mean_difference(harmful, harmless, orthogonalize=True)
    generator = torch.Generator().manual_seed(7)
    away = torch.randn(LAYERS, HIDDEN, generator=generator)
    away = away - (away * direction).sum(-1, keepdim=True) * direction
    away = away / away.norm(dim=-1, keepdim=True)
    spoiled = harmful.clone()
    spoiled[0] += 300.0 * away
    assert (_cosines(mean_difference(spoiled, harmless, orthogonalize=True), clean) < 0.8).all()
    for estimator in (winsorized_difference, median_difference):
        assert (_cosines(estimator(spoiled, harmless), clean) > 0.99).all(), estimator.__name__
    assert 0 < WINSOR_QUANTILE < 0.5

