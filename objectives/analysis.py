"""Where refusal lives, how it responds to dose, and whether an edit is specific: the pure math.

Inputs are tensors and numbers already measured; nothing here loads or runs a model.

* :func:`analyze_layers` - per layer and direction method: the class-mean separation along the
  direction, the cosines between methods, the ROC AUC of the projection (harmful against
  harmless), a cross-validated AUC of the mean difference, and the probe's cross-validated
  accuracy.
* :func:`crossing` and :func:`therapeutic_index` - the dose at which a rate crosses a level, by
  linear interpolation, or None ("not reached").
* :func:`random_band` and :func:`specificity` - how many spreads of a random-direction band an
  edit's refusal drop sits from the band's mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from abliterate.ablation.directions import METHODS as ANALYSIS_METHODS
from abliterate.ablation.directions import by_method, linear_probe, mean_difference
from abliterate.ablation.errors import AblationError

# A layer whose AUC is within this of the best is part of the best region: AUC saturates at 1.0
# on every layer after the one where the feature is written, and the first of them is the answer.
AUC_TIE = 0.005


@dataclass(frozen=True)
class LayerAnalysis:
    """Per-layer figures; lists are indexed by layer, dicts by method name.

    ``strength[m][l]``: |(mean(harmful) - mean(harmless)) . d| for method m's unit direction d
    at layer l, the class-mean separation along the direction in residual units (for the mean
    difference it is the difference's norm). ``cosines[l][i][j]``: the cosine between methods
    ``methods[i]`` and ``methods[j]`` at layer l. ``auc[m][l]``: ROC AUC of the projection on the
    direction, harmful (positive) against harmless, in-sample. ``auc_heldout[l]``: the same for
    the mean difference learned on k - 1 folds and projected on the held-out fold, pooled.
    ``probe_accuracy[l]``: the logistic probe's cross-validated accuracy. ``best_layer[m]``: the
    first layer whose AUC is within :data:`AUC_TIE` of method m's best.
    """

    methods: list[str]
    num_layers: int
    harmful: int
    harmless: int
    strength: dict[str, list[float]]
    cosines: list[list[list[float]]]
    auc: dict[str, list[float]]
    auc_heldout: list[float]
    probe_accuracy: list[float]
    best_layer: dict[str, int]
    best_layer_heldout: int

    def as_dict(self) -> dict:
        return asdict(self)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _best(values: Sequence[float]) -> int:
    top = max(values)
    return next(i for i, v in enumerate(values) if v >= top - AUC_TIE)


def heldout_auc(harmful: torch.Tensor, harmless: torch.Tensor, folds: int = 5, seed: int = 0) -> list[float]:
    """Per layer, the ROC AUC of projections on the mean difference learned without the projected
    prompts: stratified k folds, each fold's prompts projected on the direction of the others,
    scores pooled. ``folds`` is lowered to the smaller class size (at least 2 prompts per class)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, harmful.shape[0], harmless.shape[0])
    if folds < 2:
        raise AblationError(f"a held-out AUC needs at least 2 prompts per class, got {harmful.shape[0]} harmful and "
                            f"{harmless.shape[0]} harmless")
    residuals = torch.cat([harmful, harmless]).float()
    labels = np.r_[np.ones(harmful.shape[0]), np.zeros(harmless.shape[0])].astype(np.int64)
    scores = np.zeros((residuals.shape[0], residuals.shape[1]))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels):
        train_t = torch.from_numpy(train)
        positive, negative = train_t[labels[train] == 1], train_t[labels[train] == 0]
        direction = mean_difference(residuals[positive], residuals[negative])  # [L, H]
        scores[test] = (residuals[torch.from_numpy(test)] * direction).sum(-1).double().numpy()
    return [_auc(labels, scores[:, layer]) for layer in range(scores.shape[1])]


def analyze_layers(harmful: torch.Tensor, harmless: torch.Tensor, methods: Sequence[str] = ANALYSIS_METHODS) -> LayerAnalysis:
    """The per-layer analysis of residuals [N, L, H] (harmful) and [M, L, H] (harmless).

    Raises :class:`AblationError` for an unknown method, residuals of different models, or fewer
    than two prompts per class (the probe and the held-out AUC need folds).
    """
    unknown = [m for m in methods if m not in ANALYSIS_METHODS]
    if unknown or not methods:
        raise AblationError(f"unknown analysis method(s) {', '.join(unknown) or 'none given'}; use {', '.join(ANALYSIS_METHODS)}")
    if min(harmful.shape[0], harmless.shape[0]) < 2:
        raise AblationError(f"analysis needs at least 2 prompts per class, got {harmful.shape[0]} harmful and "
                            f"{harmless.shape[0]} harmless")
    harmful, harmless = harmful.float().cpu(), harmless.float().cpu()
    directions = {m: by_method(m, harmful, harmless)[0] for m in methods if m != "probe"}
    probe = linear_probe(harmful, harmless, folds=min(5, harmful.shape[0], harmless.shape[0]))
    if "probe" in methods:
        directions["probe"] = probe.directions
    directions = {m: directions[m] for m in methods}
    shift = harmful.mean(0) - harmless.mean(0)  # [L, H]
    residuals = torch.cat([harmful, harmless])
    labels = np.r_[np.ones(harmful.shape[0]), np.zeros(harmless.shape[0])].astype(np.int64)
    strength, auc = {}, {}
    for method, d in directions.items():
        strength[method] = (shift * d).sum(-1).abs().tolist()
        projections = (residuals * d).sum(-1).double().numpy()  # [N + M, L]
        auc[method] = [_auc(labels, projections[:, layer]) for layer in range(d.shape[0])]
    stack = torch.stack([directions[m] for m in methods], dim=1)  # [L, K, H], unit rows
    cosines = torch.einsum("lih,ljh->lij", stack, stack).clamp(-1.0, 1.0).tolist()
    heldout = heldout_auc(harmful, harmless)
    return LayerAnalysis(list(methods), harmful.shape[1], harmful.shape[0], harmless.shape[0], strength, cosines, auc, heldout,
                         probe.accuracy.tolist(), {m: _best(auc[m]) for m in methods}, _best(heldout))


# ---- categories: the refusal cone --------------------------------------------------------------


def effective_dimension(directions: torch.Tensor) -> float:
    """The participation ratio (sum l)^2 / sum l^2 of the eigenvalues l of the Gram matrix of
    unit ``directions`` [k, H]: 1 when they all point one way, k when they are orthogonal."""
    gram = (directions.double() @ directions.double().T)
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0)
    return float(eigenvalues.sum() ** 2 / (eigenvalues ** 2).sum().clamp_min(1e-300))


def category_specificity(directions: torch.Tensor) -> list[float]:
    """Per unit direction of [k, H], the length of its part outside the span of the others: 1 when
    orthogonal to every other category's direction, 0 when the others already contain it."""
    rows = directions.double()
    values = []
    for i in range(rows.shape[0]):
        others = torch.cat([rows[:i], rows[i + 1:]])
        if others.shape[0] == 0:
            values.append(1.0)
            continue
        basis = torch.linalg.svd(others, full_matrices=False).Vh  # rows spanning the others
        rank = int((torch.linalg.svdvals(others) > 1e-9).sum())
        inside = basis[:rank].T @ (basis[:rank] @ rows[i])
        values.append(float((rows[i] - inside).norm()))
    return values


def analyze_categories(harmful: torch.Tensor, harmless: torch.Tensor, labels: Sequence[str] | None = None, k: int | None = None,
                       seed: int = 0) -> list[dict]:
    """Per layer of [N, L, H] residuals, the refusal cone (:func:`ablation.cone.category_directions`:
    one direction per category of ``labels``, or per k-means cluster): the category names, each
    one's strength (the length of its mean difference from the harmless mean) and specificity
    (:func:`category_specificity`), their pairwise cosines, the cone's effective dimension and
    the grouping's silhouette; categories strongest first in every layer."""
    from abliterate.ablation.cone import category_directions

    layers = []
    for layer in range(harmful.shape[1]):
        cone = category_directions(harmful[:, layer], harmless[:, layer], k, labels, seed)
        layers.append({"categories": list(cone.categories), "strength": cone.strength.tolist(),
                       "specificity": category_specificity(cone.directions), "cosines": cone.pairwise_cosines().tolist(),
                       "effective_dimension": effective_dimension(cone.directions), "silhouette": cone.silhouette,
                       "prompts": [int((cone.labels == i).sum()) for i in range(len(cone.categories))]})
    return layers


# ---- dose --------------------------------------------------------------------------------------


def parse_alphas(text: str) -> list[float]:
    """``"-2,-1,0,0.5"`` as sorted distinct finite floats; a one-line error otherwise."""
    values = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise AblationError(f"--alphas: {part.strip()!r} is not a number; give comma-separated doses, e.g. -1,0,0.5,1,2") from None
        if not math.isfinite(value):
            raise AblationError(f"--alphas: {part.strip()!r} is not a finite number; give doses such as -1,0,0.5,1,2")
        values.append(value)
    if len(set(values)) < 2:
        raise AblationError(f"--alphas needs at least two different doses, got {text!r}; e.g. -1,0,0.5,1,2")
    return sorted(set(values))


def crossing(doses: Sequence[float], rates: Sequence[float], level: float = 0.5) -> float | None:
    """The first dose, walking up from the smallest, at which ``rates`` reach ``level`` from one
    side (below to at-or-above, or above to at-or-below), linearly interpolated between the two
    doses that bracket it; None when the rate never gets there ("not reached")."""
    points = sorted(zip(doses, rates))
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 < level <= r1 or r0 > level >= r1:
            return d0 + (level - r0) * (d1 - d0) / (r1 - r0)
    return None


def therapeutic_index(effective: float | None, adverse: float | None) -> float | None:
    """``adverse / effective``: how much further the dose can go before the side effect reaches
    its level than it needs to reach the wanted one; None when either is not reached or the
    effective dose is zero."""
    if effective is None or adverse is None or effective == 0:
        return None
    return adverse / effective


# ---- specificity controls -----------------------------------------------------------------------


def random_unit_directions(count: int, shape: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """``count`` random directions of ``shape`` ([H] or [L, H]), each row unit length (float32).

    Isotropic Gaussian draws, normalised: uniform on the sphere. Seeded, so controls repeat.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randn(*shape, generator=generator, dtype=torch.float32) for _ in range(count)]
    return [d / d.norm(dim=-1, keepdim=True) for d in draws]


# The least spread a band is credited with: one prompt's worth of rate. Random directions often
# leave a refusal rate exactly unchanged, and a zero spread would make any difference infinite.
def floor_spread(prompts: int) -> float:
    return 1.0 / max(prompts, 1)


@dataclass(frozen=True)
class Band:
    """Mean and sample standard deviation of a measure over random directions."""

    mean: float
    spread: float
    count: int

    def as_dict(self) -> dict:
        return asdict(self)


def random_band(values: Sequence[float]) -> Band:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise AblationError("a random band needs at least one random direction (--random)")
    spread = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Band(float(array.mean()), spread, int(array.size))


# Outside mean + SPECIFIC_SPREADS spreads of the band counts as specific (about a 2-sided 1 %
# tail of a normal band; the band is small, so the floor of one prompt's rate applies too).
SPECIFIC_SPREADS = 3.0


def specificity(candidate_drop: float, random_drops: Band, prompts: int) -> dict:
    """How the candidate's refusal drop (base rate minus edited rate) compares with the drops of
    random directions: ``spreads`` = (drop - band mean) / max(band spread, one prompt's rate),
    and ``specific`` when that is above :data:`SPECIFIC_SPREADS`."""
    spread = max(random_drops.spread, floor_spread(prompts))
    spreads = (candidate_drop - random_drops.mean) / spread
    return {"drop": candidate_drop, "band": random_drops.as_dict(), "spread_used": spread, "spreads": spreads,
            "specific": bool(spreads > SPECIFIC_SPREADS), "threshold_spreads": SPECIFIC_SPREADS}
