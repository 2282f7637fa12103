"""Dose-response sweeps and specificity controls: measurements of one model under edits.

An *intervention* maps a dose ``alpha`` to a context manager inside which the model is changed:
:func:`ablation_intervention` bakes an edit with its profile's weights scaled by alpha
(restored bit-exactly afterwards); :func:`steering_intervention` adds alpha times the unit
direction, scaled by the mean residual norm of each layer, at inference. :func:`dose_sweep`
measures every dose the same way; :func:`controls` compares an edit with random directions
baked under the same profile. The statistics are in :mod:`objectives.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.profile import Profile
from abliterate.ablation.steer import steered
from abliterate.objectives.analysis import crossing, random_band, random_unit_directions, specificity, therapeutic_index
from abliterate.objectives.kl import KLScorer
from abliterate.objectives.refusal import MarkerProxy

Intervention = Callable[[float], AbstractContextManager]


def scaled(profile: Profile, alpha: float) -> Profile:
    """``profile`` with every kernel's weights multiplied by ``alpha`` (negative adds the direction)."""
    kernels = {group: replace(k, peak_weight=k.peak_weight * alpha, floor_weight=k.floor_weight * alpha)
               for group, k in profile.kernels.items()}
    return replace(profile, kernels=kernels)


def ablation_intervention(baker: Baker, edit: Edit) -> Intervention:
    """Dose alpha: ``edit`` baked with its profile scaled by alpha (``scaled``); alpha 0 leaves
    the model as it is."""
    def apply(alpha: float):
        return nullcontext() if alpha == 0 else baker.baked_into(replace(edit, profile=scaled(edit.profile, alpha)))
    return apply


def steering_intervention(model, directions: dict[int, torch.Tensor], residual_norms: dict[int, float]) -> Intervention:
    """Dose alpha: at each layer ``l``, ``alpha * residual_norms[l] * unit(directions[l])`` added
    at the last prompt position and while generating (see :func:`ablation.steer.steered`)."""
    units = {layer: d.float() / d.float().norm() for layer, d in directions.items()}

    def apply(alpha: float):
        if alpha == 0:
            return nullcontext()
        return steered(model, {layer: alpha * residual_norms[layer] * u for layer, u in units.items()})
    return apply


@dataclass(frozen=True)
class DosePoint:
    """What one dose measured; ``over_refusal`` is None without benign-but-edgy prompts."""

    alpha: float
    refusal: float
    degenerate: float
    kl: float
    over_refusal: float | None


@dataclass(frozen=True)
class DoseResponse:
    points: list[DosePoint]
    refusal_50: float | None  # the dose at which refusal crosses 50 %, None: not reached
    over_refusal_50: float | None
    therapeutic_index: float | None  # over_refusal_50 / refusal_50 when both are reached

    def as_dict(self) -> dict:
        return asdict(self)


class Scorer:
    """Refusal and degenerate rates on harmful prompts, over-refusal on edgy ones and KL on
    harmless ones, for the model as it is now. Built on the unedited model (the KL reference)."""

    def __init__(self, loaded, harmful: Sequence[str], harmless: Sequence[str], edgy: Sequence[str] | None = None,
                 max_new_tokens: int = 48, batch_size: int = 16, chat=None):
        from abliterate.objectives.refusal import ChatFormat

        chat = chat or ChatFormat()
        self.loaded, self.harmful, self.edgy = loaded, list(harmful), list(edgy) if edgy else None
        self.proxy = MarkerProxy(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)
        # An intervention here need not be a bake of known layers: every KL pass runs in full.
        self.kl = KLScorer(loaded.model, loaded.tokenizer, chat.apply(loaded, harmless), batch_size=batch_size, prefix_cache=False)

    def score(self) -> dict:
        refusal = self.proxy.score(self.loaded, self.harmful)
        over = self.proxy.score(self.loaded, self.edgy).rate("refusal") if self.edgy else None
        return {"refusal": refusal.rate("refusal"), "degenerate": refusal.rate("degenerate"), "kl": self.kl.score(),
                "over_refusal": over}


def dose_sweep(scorer: Scorer, intervention: Intervention, alphas: Sequence[float],
               log: Callable[[str], None] = lambda _: None) -> DoseResponse:
    """Every dose measured by ``scorer`` under ``intervention``, and the 50 % crossings."""
    points = []
    for alpha in sorted(alphas):
        with intervention(alpha):
            figures = scorer.score()
        points.append(DosePoint(alpha, **figures))
        log(f"alpha {alpha:+g}: refusal {figures['refusal']:.2f}, degenerate {figures['degenerate']:.2f}, KL {figures['kl']:.4g}"
            + ("" if figures["over_refusal"] is None else f", over-refusal {figures['over_refusal']:.2f}"))
    doses = [p.alpha for p in points]
    refusal_50 = crossing(doses, [p.refusal for p in points])
    over = [p.over_refusal for p in points if p.over_refusal is not None]
    over_50 = crossing(doses, over) if scorer.edgy and len(over) == len(points) else None  # measured at every dose
    return DoseResponse(points, refusal_50, over_50, therapeutic_index(refusal_50, over_50))


def controls(scorer: Scorer, baker: Baker, edit: Edit, count: int, seed: int = 0,
             log: Callable[[str], None] = lambda _: None) -> dict:
    """The ``edit`` against ``count`` random directions of the same shape and norm (unit rows),
    each baked in its place with everything else of the edit (profile, norm preservation, heads):
    the base figures, the edit's,
    each random direction's, the band (mean, spread) of refusal and KL, and the specificity of
    the edit's refusal drop (see :func:`objectives.analysis.specificity`)."""
    base = scorer.score()
    with baker.baked_into(edit):
        edited = scorer.score()
    log(f"base refusal {base['refusal']:.2f}; the edit: refusal {edited['refusal']:.2f}, KL {edited['kl']:.4g}")
    randoms = []
    for i, random_direction in enumerate(random_unit_directions(count, tuple(edit.directions.shape), seed)):
        with baker.baked_into(replace(edit, directions=random_direction)):
            randoms.append(scorer.score())
        log(f"random {i + 1}/{count}: refusal {randoms[-1]['refusal']:.2f}, KL {randoms[-1]['kl']:.4g}")
    refusal_band, kl_band = random_band([r["refusal"] for r in randoms]), random_band([r["kl"] for r in randoms])
    drops = random_band([base["refusal"] - r["refusal"] for r in randoms])
    return {"base": base, "edit": edited, "random": randoms, "random_refusal": refusal_band.as_dict(), "random_kl": kl_band.as_dict(),
            "specificity": specificity(base["refusal"] - edited["refusal"], drops, len(scorer.harmful)), "seed": seed}
