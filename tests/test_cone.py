"""ablation.cone: planted category directions are found, by labels and by k-means."""

import math

import pytest
import torch

from abliterate.ablation.cone import category_directions, cone_stack, orthonormal_basis
from abliterate.ablation.errors import AblationError

HIDDEN = 24


def planted(seed=0, per_category=20, strengths=(6.0, 4.0, 2.5), noise=0.2):
    """Harmful residuals = offset + category direction * strength + noise; harmless = offset + noise."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(HIDDEN, len(strengths), generator=g, dtype=torch.float64))[0].T.float()
    offset = 3.0 * torch.randn(HIDDEN, generator=g)
    harmful, labels = [], []
    for i, strength in enumerate(strengths):
        harmful.append(offset + strength * directions[i] + noise * torch.randn(per_category, HIDDEN, generator=g))
        labels += [f"cat{i}"] * per_category
    harmless = offset + noise * torch.randn(40, HIDDEN, generator=g)
    order = torch.randperm(len(labels), generator=g)  # categories interleaved, as in a real source
    return torch.cat(harmful)[order], harmless, directions, [labels[i] for i in order]


def test_labels_give_one_direction_per_category_strongest_first():
    harmful, harmless, directions, labels = planted()
    result = category_directions(harmful, harmless, labels=labels)
    assert result.directions.shape == (3, HIDDEN) and result.categories == ("cat0", "cat1", "cat2")
    assert torch.allclose(result.directions.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (torch.nn.functional.cosine_similarity(result.directions, directions) > 0.99).all()
    assert result.strength[0] > result.strength[1] > result.strength[2]
    assert result.silhouette > 0.5 and not result.weak
    assert [result.categories[i] for i in result.labels] == labels
    top2 = category_directions(harmful, harmless, k=2, labels=labels)
    assert top2.categories == ("cat0", "cat1") and (top2.labels == -1).sum() == labels.count("cat2")


def test_kmeans_finds_the_planted_categories():
    harmful, harmless, directions, labels = planted(seed=1)
    result = category_directions(harmful, harmless, k=3)
    assert (torch.nn.functional.cosine_similarity(result.directions, directions) > 0.99).all()
    # The clusters are the categories (up to naming).
    pairs = {(label, int(cluster)) for label, cluster in zip(labels, result.labels)}
    assert len(pairs) == 3
    auto = category_directions(harmful, harmless)  # k chosen by silhouette
    assert auto.directions.shape[0] == 3


def test_a_single_cloud_is_reported_weak():
    g = torch.Generator().manual_seed(2)
    harmful = torch.randn(60, HIDDEN, generator=g) + 1.0
    harmless = torch.randn(30, HIDDEN, generator=g)
    result = category_directions(harmful, harmless, k=4)
    assert result.weak and result.silhouette < 0.25
    one = category_directions(harmful, harmless, k=1)
    assert math.isnan(one.silhouette) and one.weak
    assert torch.allclose(one.directions[0], torch.nn.functional.normalize(harmful.mean(0) - harmless.mean(0), dim=0), atol=1e-5)


def test_orthonormal_basis_spans_in_order_and_zeroes_dependent_rows():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, HIDDEN, generator=g)
    directions = torch.stack([a, b, 2 * a - b, torch.randn(HIDDEN, generator=g)])
    q = orthonormal_basis(directions)
    assert q.shape == (4, HIDDEN) and torch.equal(q[2], torch.zeros(HIDDEN))
    kept = q[[0, 1, 3]]
    assert torch.allclose(kept @ kept.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(q[0], a / a.norm(), atol=1e-6)
    projector = q.T @ q
    assert torch.allclose(projector @ directions.T, directions.T, atol=1e-4)  # the span is kept


def test_cone_stack_per_layer_and_bad_input():
    harmful, harmless, _, labels = planted()
    stacked_harmful, stacked_harmless = torch.stack([harmful, -harmful], 1), torch.stack([harmless, -harmless], 1)
    bases, results = cone_stack(stacked_harmful, stacked_harmless, k=2)
    assert bases.shape == (2, 2, HIDDEN) and len(results) == 2
    assert torch.allclose(bases[1], -bases[0], atol=1e-5)
    assert cone_stack(stacked_harmful, stacked_harmless, k=5, labels=labels)[0].shape == (2, 3, HIDDEN)
    with pytest.raises(AblationError, match="one per prompt"):
        category_directions(harmful, harmless, labels=labels[:-1])
    with pytest.raises(AblationError, match="k must be between 1 and the 3 categories"):
        category_directions(harmful, harmless, k=4, labels=labels)
    with pytest.raises(AblationError, match=r"\[prompts, hidden\]"):
        category_directions(harmful[0], harmless)
