"""A study's payload, and a candidate resolved against it into the :class:`ablation.bake.Edit` it bakes.

The payload is a flat {name: tensor} map, every tensor with the layer count first, computed once
per study and cached with it under :func:`payload_key`: each direction method's tensor under its
name (:mod:`ablation.methods`), the tensors of each intervention's ``needs``
(:mod:`ablation.interventions`), and with calibrated profiles ``calibration:<method>`` [L], each
layer's refusal strength on the harmful prompts along the method's own direction of that layer
(:func:`refusal_strength`).

A study that uses only the single-direction methods with plain ablation has exactly the payload
and cache key it always had, so existing studies resume and re-bake unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from abliterate.ablation.interventions import needed
from abliterate.ablation.registry import PayloadContext, interventions, methods

if TYPE_CHECKING:
    from abliterate.ablation.architectures import Writer
    from abliterate.ablation.bake import Edit
    from abliterate.ablation.candidate import Candidate
    from abliterate.ablation.profile import Profile

# A calibrated layer weight is the kernel's times the layer's strength over the target, held in here.
CALIBRATION_CLAMP = (0.5, 2.0)


def payload_key(space: Any) -> str:
    """The study cache key under which the payload of ``space`` (a search space, or a list of
    method names) is stored."""
    if isinstance(space, (list, tuple)):
        return f"directions:{','.join(sorted(space))}"
    key = f"directions:{','.join(sorted(space.methods))}"
    parts = [method.key(space) for method in methods.chosen(space.methods)]
    parts += [interventions.get(name).key(space) for name in sorted(space.interventions)]
    extras = [part for part in parts if part]
    if space.calibration:
        extras.append("calibrated")
    return key + (f"|{'|'.join(extras)}" if extras else "")


def method_tensor(method: str, harmful: torch.Tensor, harmless: torch.Tensor, space: Any = None,
                  log: Callable[[str], None] = lambda line: None, labels: Sequence[str] | None = None,
                  sae: str | None = None) -> torch.Tensor:
    """The payload tensor of one direction method from residuals [N, L, H]; ``labels``: the
    category of each harmful prompt, which the cone then follows instead of k-means; ``sae``: the
    folder of the study's SAEs (method ``sae``)."""
    context = PayloadContext((harmful, harmless), space, log=log, labels=labels, sae=sae)
    return methods.get(method).compute(context)


def compute_payload(context: PayloadContext) -> dict[str, torch.Tensor]:
    """Everything the trials of ``context.space`` bake from (see the module docstring)."""
    space = context.space
    payload = {name: methods.get(name).compute(context) for name in sorted(space.methods)}
    if space.calibration:
        for name in sorted(space.methods):
            payload[f"calibration:{name}"] = refusal_strength(*context.residuals, payload[name])
            context.log(f"refusal strength per layer along {name}: "
                        + ", ".join(f"{float(s):.3f}" for s in payload[f"calibration:{name}"]))
    for intervention in interventions.chosen(space.interventions):
        payload.update(intervention.payload(context))
    return payload


def refusal_strength(harmful: torch.Tensor, harmless: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[L] per layer, the median projection of the harmful residuals [N, L, H], less the harmless
    mean, on that layer's direction ([L, H], or the first of [L, k, H]), relative to the layer's
    mean harmful residual norm: how much refusal the layer's stream carries."""
    per_layer = directions[:, 0] if directions.dim() == 3 else directions
    shifted = harmful.float() - harmless.float().mean(dim=0)
    projections = torch.einsum("nlh,lh->nl", shifted, per_layer.float())
    return projections.median(dim=0).values / harmful.float().norm(dim=-1).mean(dim=0).clamp_min(1e-12)


def calibrated_profile(candidate: Candidate, payload: Mapping[str, torch.Tensor]) -> Profile:
    """The candidate's profile, calibrated when it asks for it: each layer's weight times
    ``clamp(s_l / T, 0.5, 2)``, with s_l the layer's refusal strength (:func:`refusal_strength`)
    and T the candidate's target percentile of s over the layers. A low target strengthens most
    layers, a high one weakens most; layers where refusal is strongest are always edited hardest."""
    if not candidate.calibration:
        return candidate.profile
    strength = needed(payload, f"calibration:{candidate.method}", candidate).double()
    target = float(torch.quantile(strength, candidate.calibration / 100.0))
    factors = (strength / target if target > 0 else torch.ones_like(strength)).clamp(*CALIBRATION_CLAMP)
    return replace(candidate.profile, layer_scale=tuple(float(f) for f in factors))


def resolve(candidate: Candidate, payload: Mapping[str, torch.Tensor], writers: Sequence[Writer]) -> Edit:
    """The edit ``candidate`` bakes, from the study's ``payload``: its method's directions with its
    (calibrated) profile, made into its intervention's edit. ``writers``: the unedited model's
    (an intervention may choose where to edit by them, as ``heads`` does)."""
    from abliterate.ablation.bake import Edit

    removed = methods.get(candidate.method).directions(candidate, needed(payload, candidate.method, candidate))
    removal = Edit(removed, calibrated_profile(candidate, payload), candidate.norm_preserving)
    return interventions.get(candidate.intervention).edit(candidate, payload, writers, removal)


def edit_for_params(params: Mapping[str, Any], payload: Mapping[str, torch.Tensor], writers: Sequence[Writer]) -> Edit:
    """The edit a trial's ``params`` bake, from the study's ``payload`` on the model of ``writers``."""
    from abliterate.ablation.candidate import candidate_from_params

    return resolve(candidate_from_params(params, layers_of(payload)), payload, writers)


def layers_of(payload: Mapping[str, torch.Tensor]) -> int:
    """The decoder layer count of the model a payload was computed on."""
    return next(iter(payload.values())).shape[0]


def used_tensors(candidate: Candidate, payload: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every payload tensor the candidate's bake reads (what an export keeps beside the weights)."""
    names = [candidate.method, *interventions.get(candidate.intervention).needs]
    names += [f"calibration:{candidate.method}"] if candidate.calibration else []
    return {name: needed(payload, name, candidate).contiguous() for name in names}
