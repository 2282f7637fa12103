"""Refusal directions from captured residuals, as small pure functions.

Inputs are residuals captured at every decoder layer: one float tensor of shape [N, L, H] for
harmful prompts and one of shape [M, L, H] for harmless prompts (N and M may differ). Every
direction returned here points from harmless toward harmful (harmful minus harmless), is unit
length along its last axis, float32 and on the CPU.

Six estimators are offered:

* :func:`mean_difference` - the difference of the class means per layer, optionally with its
  component along the harmless mean removed ("projected mean difference");
* :func:`winsorized_difference` and :func:`median_difference` - the projected difference of robust
  class locations (each coordinate clipped to its quantiles before the mean; the coordinate-wise
  median), which a few outlier prompts cannot swing;
* :func:`principal_components` - the top principal directions of paired differences;
* :func:`linear_probe` - the weight vector of a logistic-regression probe per layer, with its
  cross-validated accuracy;
* :func:`interpolate` - a direction at a fractional layer index from a per-layer stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from abliterate.ablation.edit import unit
from abliterate.ablation.errors import AblationError

# Below this length a would-be direction is numerically zero and has no meaningful orientation.
_DEGENERATE = 1e-12


@dataclass(frozen=True)
class ProbeResult:
    """Per-layer probe directions and how well each layer's probe separates the classes.

    ``directions``: [L, H] unit float32 vectors pointing toward the harmful class.
    ``accuracy``: [L] float32 mean cross-validated accuracy of each layer's probe.
    """

    directions: torch.Tensor
    accuracy: torch.Tensor


def _checked(harmful: torch.Tensor, harmless: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both residual sets as float32 CPU tensors, after checking they describe the same model."""
    for name, residuals in (("harmful", harmful), ("harmless", harmless)):
        if not isinstance(residuals, torch.Tensor) or residuals.dim() != 3:
            shape = tuple(residuals.shape) if isinstance(residuals, torch.Tensor) else type(residuals).__name__
            raise AblationError(f"{name} residuals must have shape [prompts, layers, hidden], got {shape}")
        if residuals.shape[0] < 1:
            raise AblationError(f"{name} residuals hold no prompts; capture at least one")
    if harmful.shape[1:] != harmless.shape[1:]:
        raise AblationError(
            f"harmful residuals have [layers, hidden] = {list(harmful.shape[1:])} but harmless have "
            f"{list(harmless.shape[1:])}; capture both from the same model"
        )
    return harmful.detach().float().cpu(), harmless.detach().float().cpu()


def _raw_mean_difference(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    return harmful.mean(dim=0) - harmless.mean(dim=0)


def mean_difference(
    harmful: torch.Tensor, harmless: torch.Tensor, orthogonalize: bool = False
) -> torch.Tensor:
    """The per-layer direction ``unit(mean(harmful) - mean(harmless))``, shape [L, H].

    With ``orthogonalize=True`` the difference first loses its component along
    ``unit(mean(harmless))`` of the same layer, so the returned direction has zero dot with the
    harmless mean ("projected mean difference"). Raises :class:`AblationError` when the two
    residual sets do not share L and H.
    """
    harmful, harmless = _checked(harmful, harmless)
    difference = _raw_mean_difference(harmful, harmless)
    if orthogonalize:
        # The harmless mean is largely what every prompt writes regardless of content; projecting
        # it out keeps the edit from shrinking the residual's ordinary magnitude along that axis.
        return _projected(difference, harmless.mean(dim=0))
    return unit(difference)


# The share of prompts clipped at each end of every coordinate by the winsorized estimator: enough
# to blunt one or two outliers among the few dozen extraction prompts a study uses, and fixed
# (not searched) so that a study's payload is one tensor per method.
WINSOR_QUANTILE = 0.05


def _projected(difference: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """``unit(difference)`` after removing its component along ``unit(baseline)``, per layer."""
    baseline = unit(baseline)
    return unit(difference - (difference * baseline).sum(dim=-1, keepdim=True) * baseline)


def winsorize(residuals: torch.Tensor, quantile: float = WINSOR_QUANTILE) -> torch.Tensor:
    """Residuals [N, L, H] with every (layer, coordinate) clipped to its own ``quantile`` and
    ``1 - quantile`` quantiles over the N prompts (linear interpolation between prompts). Raises
    :class:`AblationError` for a quantile outside [0, 0.5)."""
    if not 0.0 <= quantile < 0.5:
        raise AblationError(f"the winsorizing quantile must be in [0, 0.5), got {quantile}")
    low, high = torch.quantile(residuals, torch.tensor([quantile, 1.0 - quantile]), dim=0)
    return residuals.clamp(min=low, max=high)


def winsorized_difference(harmful: torch.Tensor, harmless: torch.Tensor, quantile: float = WINSOR_QUANTILE) -> torch.Tensor:
    """The projected mean difference of the winsorized residuals of each class, shape [L, H]:
    :func:`mean_difference` with ``orthogonalize=True`` after :func:`winsorize` (each class
    clipped at its own quantiles). With ``quantile=0`` it is exactly the projected mean difference."""
    harmful, harmless = _checked(harmful, harmless)
    return mean_difference(winsorize(harmful, quantile), winsorize(harmless, quantile), orthogonalize=True)


def median_difference(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """``unit(median(harmful) - median(harmless))`` per layer with its component along the
    harmless median removed, shape [L, H]; medians coordinate-wise over the prompts (the mean of
    the two middle values for an even count, so that it does not depend on the prompts' order)."""
    harmful, harmless = _checked(harmful, harmless)
    harmful_median, harmless_median = torch.quantile(harmful, 0.5, dim=0), torch.quantile(harmless, 0.5, dim=0)
    return _projected(harmful_median - harmless_median, harmless_median)


def separation(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Per layer, how far apart the class means are relative to the residual's size, shape [L]:
    ``|mean(harmful) - mean(harmless)| / mean(|harmless|)``.

    Linear separability saturates early (a probe tells harmful from harmless at almost every
    layer), but this ratio peaks where the refusal feature is strongest compared with what else the
    stream carries: the usual place to take a direction from.
    """
    harmful, harmless = _checked(harmful, harmless)
    return _raw_mean_difference(harmful, harmless).norm(dim=-1) / harmless.norm(dim=-1).mean(dim=0).clamp_min(_DEGENERATE)


def writes_along(harmful: torch.Tensor, harmless: torch.Tensor, layer: int) -> torch.Tensor:
    """Per layer, how much that layer widens the gap between the class means along the unit mean
    difference taken at ``layer``, shape [L], never negative.

    With ``g_l`` the gap after layer ``l`` (``(mean(harmful) - mean(harmless))[l] . r``) and
    ``g_-1 = 0`` (both classes end on the same chat-template token), layer ``l`` writes
    ``max(g_l - g_(l-1), 0)``: the layers an edit of the writers should reach to keep the
    direction out of the stream. Raises :class:`AblationError` for a layer outside the stack.
    """
    harmful, harmless = _checked(harmful, harmless)
    difference = _raw_mean_difference(harmful, harmless)
    if not 0 <= layer < difference.shape[0]:
        raise AblationError(f"layer {layer} is outside the stack of {difference.shape[0]} layers")
    gap = difference @ unit(difference[layer])
    return torch.diff(gap, prepend=gap.new_zeros(1)).clamp_min(0.0)


def principal_components(harmful: torch.Tensor, harmless: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The top-``k`` principal directions of paired differences per layer, shape [k, L, H].

    Pairs are ``harmful[i] - harmless[i]`` for ``i < min(N, M)``. Component ``j`` at layer ``l`` is
    the ``j``-th right singular vector of that layer's raw (uncentered) difference matrix, with its
    sign chosen so its dot with the layer's mean difference is non-negative. Components of one
    layer are orthonormal. Raises :class:`AblationError` when the residual sets do not share L and
    H, or when ``k`` is below 1 or above the number of pairs (or H).
    """
    harmful, harmless = _checked(harmful, harmless)
    pairs = min(harmful.shape[0], harmless.shape[0])
    hidden = harmful.shape[2]
    if k < 1 or k > pairs:
        raise AblationError(f"k must be between 1 and the number of prompt pairs ({pairs}), got {k}")
    if k > hidden:
        raise AblationError(f"k must be at most the hidden size ({hidden}), got {k}")

    differences = (harmful[:pairs] - harmless[:pairs]).transpose(0, 1)  # [L, pairs, H]
    # Uncentered on purpose: the second moment of the differences is shift shift^T + covariance,
    # so the shared harmful shift dominates component 1. Centering would subtract exactly that
    # shift and leave only the prompt-to-prompt scatter around it.
    _, _, right = torch.linalg.svd(differences, full_matrices=False)
    components = right[:, :k, :].transpose(0, 1).contiguous()  # [k, L, H]

    # Singular vectors have arbitrary sign; align each with the harmless-to-harmful shift.
    reference = _raw_mean_difference(harmful, harmless)  # [L, H]
    alignment = (components * reference).sum(dim=-1, keepdim=True)  # [k, L, 1]
    components = torch.where(alignment < 0, -components, components)
    return unit(components)


def linear_probe(
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """A logistic-regression probe per layer separating harmful from harmless residuals.

    Each layer's direction is the unit weight vector of a probe fitted on all residuals of that
    layer (harmful labelled 1, so the direction points toward harmful). Its accuracy is the mean
    of ``cross_val_score`` over a shuffled ``StratifiedKFold(folds, random_state=seed)``. ``C`` is
    sklearn's inverse regularisation strength. Raises :class:`AblationError` when the residual
    sets do not share L and H, when ``folds`` < 2, or when either class has fewer than ``folds``
    prompts.
    """
    # Imported here so the other estimators work without sklearn's import cost.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    harmful, harmless = _checked(harmful, harmless)
    if folds < 2:
        raise AblationError(f"folds must be at least 2 for cross-validation, got {folds}")
    smallest = min(harmful.shape[0], harmless.shape[0])
    if smallest < folds:
        raise AblationError(
            f"the linear probe needs at least {folds} prompts per class for {folds}-fold "
            f"cross-validation, got {harmful.shape[0]} harmful and {harmless.shape[0]} harmless"
        )

    labels = np.concatenate([np.ones(harmful.shape[0]), np.zeros(harmless.shape[0])]).astype(np.int64)
    residuals = torch.cat([harmful, harmless], dim=0).double().numpy()  # [N + M, L, H]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)

    directions = []
    accuracy = []
    for layer in range(residuals.shape[1]):
        features = residuals[:, layer, :]
        # Residual scales differ by orders of magnitude across layers and models; dividing by one
        # scalar lets lbfgs converge and only rescales the coefficient vector, never turns it.
        scale = float(features.std())
        features = features / (scale if scale > 0 else 1.0)
        probe = LogisticRegression(C=C, max_iter=1000)
        scores = cross_val_score(probe, features, labels, cv=splitter, scoring="accuracy")
        accuracy.append(float(np.mean(scores)))
        probe.fit(features, labels)
        directions.append(torch.from_numpy(probe.coef_[0].copy()))

    return ProbeResult(
        directions=unit(torch.stack(directions)),
        accuracy=torch.tensor(accuracy, dtype=torch.float32),
    )


def interpolate(directions: torch.Tensor, index: float) -> torch.Tensor:
    """The unit direction at fractional layer ``index`` of a per-layer stack [L, H], shape [H].

    Linear interpolation between ``directions[floor(index)]`` and ``directions[ceil(index)]``,
    then scaled to unit length; at an integer index this is that layer's direction. Raises
    :class:`AblationError` when ``directions`` is not [L, H], when ``index`` is outside
    [0, L - 1], or when the two neighbours cancel out (opposite directions at the midpoint).
    """
    if not isinstance(directions, torch.Tensor) or directions.dim() != 2 or directions.shape[0] < 1:
        shape = tuple(directions.shape) if isinstance(directions, torch.Tensor) else type(directions).__name__
        raise AblationError(f"directions must have shape [layers, hidden], got {shape}")
    last = directions.shape[0] - 1
    index = float(index)
    if not 0.0 <= index <= last:  # also rejects NaN
        raise AblationError(f"layer index {index} is outside [0, {last}]")

    below = math.floor(index)
    above = math.ceil(index)
    t = index - below
    stack = directions.detach().float().cpu()
    blended = (1.0 - t) * stack[below] + t * stack[above]
    if float(blended.norm()) < _DEGENERATE:
        raise AblationError(
            f"directions at layers {below} and {above} cancel at index {index}; pick another index"
        )
    return unit(blended)


METHODS = ("mean", "mean-projected", "pca", "probe", "winsorized", "median")


def by_method(method: str, harmful: torch.Tensor, harmless: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-layer directions [L, H] by method name, and the probe's accuracy [L] (else None)."""
    if method == "mean":
        return mean_difference(harmful, harmless), None
    if method == "mean-projected":
        return mean_difference(harmful, harmless, orthogonalize=True), None
    if method == "pca":
        return principal_components(harmful, harmless, k=1)[0], None
    if method == "probe":
        result = linear_probe(harmful, harmless, folds=min(5, harmful.shape[0], harmless.shape[0]))
        return result.directions, result.accuracy
    if method == "winsorized":
        return winsorized_difference(harmful, harmless), None
    if method == "median":
        return median_difference(harmful, harmless), None
    raise AblationError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
