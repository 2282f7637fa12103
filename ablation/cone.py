"""Refusal as a cone: several directions per layer, one per category of harmful request.

A single mean-difference direction averages over every kind of harmful request. Analyses of
small chat models find instead a handful of near-orthogonal category directions (a "cone").
This module finds them on one layer's residuals and turns them into a basis the edit can remove
as a subspace (:func:`ablation.edit.ablate_subspace`).

Contract (one layer; ``harmful`` [N, H], ``harmless`` [M, H], any float dtype and device):

* :func:`category_directions` groups the harmful residuals, by the ``labels`` given (a category
  column of the prompt source) or else by k-means, and returns a :class:`ConeResult`: one unit
  direction per group, ``unit(mean(harmful in group) - mean(harmless))``, strongest first (by
  the length of that difference), so the first ``j`` rows span the ``j`` strongest categories.
* :func:`orthonormal_basis` turns directions [k, H] into orthonormal rows spanning the same
  space, in the same order (Gram-Schmidt); a direction already in the span of the earlier ones
  gives a zero row, so the shape never changes and ``Q^T Q`` is still the projector.
* :func:`cone_stack` does both on every layer of [N, L, H] residuals: bases [L, k, H].

Everything returned is float32 on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from abliterate.ablation.errors import AblationError

# Kaufman and Rousseeuw's reading of the silhouette: below 0.25 there is no substantial
# structure, so k-means has cut a cloud rather than found categories.
WEAK_SILHOUETTE = 0.25
# With k left open and no labels, k-means tries 2..MAX_AUTO_K clusters and keeps the best silhouette.
MAX_AUTO_K = 6
# A direction whose remainder after Gram-Schmidt is this short (relative) adds no new dimension.
_DEPENDENT = 1e-6


@dataclass(frozen=True)
class ConeResult:
    """The category directions of one layer.

    ``directions``: [k, H] unit float32 rows, strongest category first.
    ``labels``: [N] int64, the row of ``directions`` each harmful prompt belongs to (-1 for a
    prompt of a category that was not kept).
    ``silhouette``: mean silhouette of that grouping of the harmful residuals (NaN when it is
    undefined: one group, or as many groups as prompts).
    ``categories``: the name of each row (the label values given, or ``cluster i``).
    ``strength``: [k] the length of each unnormalised mean difference.
    """

    directions: torch.Tensor
    labels: torch.Tensor
    silhouette: float
    categories: tuple[str, ...]
    strength: torch.Tensor

    @property
    def weak(self) -> bool:
        """True when the grouping has no substantial structure (silhouette below 0.25)."""
        return not self.silhouette >= WEAK_SILHOUETTE

    def pairwise_cosines(self) -> torch.Tensor:
        """[k, k] cosines between the directions (1 on the diagonal)."""
        return self.directions @ self.directions.T


def _layer(values: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] < 1:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise AblationError(f"{name} residuals of one layer must have shape [prompts, hidden], got {shape}")
    return values.detach().double().cpu()


def category_directions(harmful: torch.Tensor, harmless: torch.Tensor, k: int | None = None,
                        labels: Sequence | None = None, seed: int = 0) -> ConeResult:
    """One direction per category of harmful prompt, strongest first (see the module docstring).

    With ``labels`` (one per harmful row), the categories are the distinct labels; ``k`` keeps
    only the ``k`` strongest. Without, k-means (``seed``) cuts the harmful residuals into ``k``
    clusters; ``k=None`` tries 2..6 and keeps the best silhouette. Raises :class:`AblationError`
    when the shapes disagree, a label is missing, or ``k`` is not between 1 and the number of
    categories (labels) or prompts (k-means).
    """
    harmful, harmless = _layer(harmful, "harmful"), _layer(harmless, "harmless")
    if harmful.shape[1] != harmless.shape[1]:
        raise AblationError(f"harmful residuals have hidden size {harmful.shape[1]} but harmless have {harmless.shape[1]}")
    count = harmful.shape[0]
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != count:
            raise AblationError(f"got {len(labels)} category labels for {count} harmful prompts; give one per prompt")
        names = sorted(set(labels))
        groups = np.array([names.index(label) for label in labels])
        keep = len(names) if k is None else k
        if not 1 <= keep <= len(names):
            raise AblationError(f"k must be between 1 and the {len(names)} categories of the labels, got {k}")
    else:
        if k is not None and not 1 <= k <= count:
            raise AblationError(f"k must be between 1 and the {count} harmful prompts for k-means, got {k}")
        groups = _kmeans(harmful.numpy(), k, seed) if k != 1 else np.zeros(count, dtype=np.int64)
        keep = int(groups.max()) + 1
        names = [f"cluster {i}" for i in range(keep)]

    baseline = harmless.mean(dim=0)
    differences = torch.stack([harmful[torch.from_numpy(groups == g)].mean(dim=0) - baseline for g in range(len(names))])
    strength = differences.norm(dim=-1)
    order = torch.argsort(strength, descending=True, stable=True)[:keep]
    rank = {int(g): i for i, g in enumerate(order)}
    kept = torch.tensor([rank.get(int(g), -1) for g in groups], dtype=torch.int64)
    directions = differences[order] / strength[order].clamp_min(1e-300).unsqueeze(-1)
    return ConeResult(directions.float(), kept, _silhouette(harmful.numpy(), groups),
                      tuple(names[int(g)] for g in order), strength[order].float())


def _kmeans(points: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    def fit(clusters: int) -> np.ndarray:
        return KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(points).astype(np.int64)

    if k is not None:
        return fit(k)
    candidates = [fit(c) for c in range(2, min(MAX_AUTO_K, points.shape[0] - 1) + 1)]
    if not candidates:
        raise AblationError(f"k-means needs at least 3 harmful prompts to choose k, got {points.shape[0]}; give k")
    scores = [_silhouette(points, groups) for groups in candidates]
    return candidates[int(np.nanargmax(scores))] if not all(map(math.isnan, scores)) else candidates[0]


def _silhouette(points: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    distinct = len(set(groups.tolist()))
    if not 2 <= distinct <= points.shape[0] - 1:
        return math.nan
    return float(silhouette_score(points, groups))


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows [k, H] spanning ``directions`` [k, H], in order (Gram-Schmidt in float64).

    Row ``i`` is the unit remainder of direction ``i`` after removing its part in the span of
    rows ``0..i-1``, or zero when nothing is left (the direction adds no dimension). So
    ``Q^T Q`` is the orthogonal projector onto the span, whatever the rank.
    """
    if not isinstance(directions, torch.Tensor) or directions.dim() != 2:
        shape = tuple(directions.shape) if isinstance(directions, torch.Tensor) else type(directions).__name__
        raise AblationError(f"directions must have shape [k, hidden], got {shape}")
    rows: list[torch.Tensor] = []
    for vector in directions.detach().double().cpu():
        scale = float(vector.norm())
        for row in rows:
            vector = vector - (row @ vector) * row
        for row in rows:  # twice is enough (Kahan): the remainder is orthogonal to working precision
            vector = vector - (row @ vector) * row
        length = float(vector.norm())
        rows.append(vector / length if scale > 0 and length > _DEPENDENT * scale else torch.zeros_like(vector))
    return torch.stack(rows).float() if rows else directions.detach().float().cpu()


def cone_stack(harmful: torch.Tensor, harmless: torch.Tensor, k: int, labels: Sequence | None = None,
               seed: int = 0) -> tuple[torch.Tensor, list[ConeResult]]:
    """Per layer of [N, L, H] residuals: the orthonormal basis [L, k, H] of the ``k`` strongest
    category directions (strongest first, so ``[:, :j]`` is the ``j``-direction cone), and each
    layer's :class:`ConeResult`. With labels, ``k`` is capped at the number of categories."""
    if harmful.dim() != 3 or harmless.dim() != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise AblationError(f"residuals must be [prompts, layers, hidden] of one model, got {tuple(harmful.shape)} "
                            f"and {tuple(harmless.shape)}")
    if labels is not None:
        k = min(k, len(set(map(str, labels))))
    results = [category_directions(harmful[:, layer], harmless[:, layer], k, labels, seed) for layer in range(harmful.shape[1])]
    return torch.stack([orthonormal_basis(result.directions) for result in results]), results
