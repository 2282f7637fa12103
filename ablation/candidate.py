"""One trial's edit as the engine reads it: a :class:`Candidate`, and how a trial's params become one.

Positions in params are fractions of the layer stack, so a study's space means the same thing on
a 24-layer and a 64-layer model; :func:`candidate_from_params` turns them into layer indices. It
is pure, so a stored trial is re-baked exactly (export, promotion). The direction method and the
intervention a candidate names are registered implementations (:mod:`ablation.registry`), which
read their own params.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from abliterate.ablation.profile import Kernel, Profile

if TYPE_CHECKING:
    import torch

GROUPS = ("attn", "mlp")

# What an edit is when its params lack these (a space that does not search them).
IMPLIED = {"intervention": "ablate", "calibration": 0}


@dataclass(frozen=True)
class Candidate:
    """One edit: which direction, baked with which profile, by which intervention.

    ``component``, ``rank``, ``amplify_strength`` and ``heads`` are the built-in methods' and
    interventions' own settings; ``options`` holds those of any other registered one, by param name.
    """

    method: str
    scope: str
    direction_index: float  # a fractional layer index, used when scope is global
    profile: Profile = field(default_factory=Profile)
    norm_preserving: bool = False
    component: int = 0  # pca: which principal component
    rank: int = 1  # cone, sae: how many directions (categories, features) removed together, strongest first
    intervention: str = "ablate"
    amplify_strength: float = 0.0  # amplify: b in W <- W + b c c^T W
    heads: int = 0  # heads: how many of the highest-scoring heads are edited
    calibration: int = 0  # the target percentile of a calibrated profile; 0: the kernels' weights as they are
    options: Mapping[str, Any] = field(default_factory=dict)

    def along(self, per_layer: torch.Tensor) -> torch.Tensor:
        """A per-layer stack [L, H] read as this candidate's scope reads directions: the one
        interpolated at its direction index (global, [H]) or every layer's own ([L, H])."""
        from abliterate.ablation.directions import interpolate

        return interpolate(per_layer, self.direction_index) if self.scope == "global" else per_layer


def candidate_from_params(params: Mapping[str, Any], num_layers: int) -> Candidate:
    """The edit a trial's params describe, on a model with ``num_layers`` decoder layers."""
    from abliterate.ablation.registry import interventions, methods

    depth = num_layers - 1
    kernels = {
        group: Kernel(
            shape=params[f"{group}_shape"],
            peak=params[f"{group}_peak"] * depth,
            peak_weight=params[f"{group}_peak_weight"],
            floor_weight=params[f"{group}_floor_fraction"] * params[f"{group}_peak_weight"],
            falloff=max(params[f"{group}_falloff"] * depth, 0.5),
        )
        for group in GROUPS
    }
    profile = Profile(kernels, first_layer=round(params["first_layer"] * depth), last_layer=round(params["last_layer"] * depth))
    intervention = params.get("intervention", IMPLIED["intervention"])
    own = dict(methods.get(params["method"]).settings(params))
    for name, value in interventions.get(intervention).settings(params).items():
        own[name] = {**own.get(name, {}), **value} if name == "options" else value
    return Candidate(params["method"], params["scope"], params.get("direction_index", 0.0) * depth, profile,
                     bool(params["norm_preserving"]), intervention=intervention,
                     calibration=int(params.get("calibration", IMPLIED["calibration"])), **own)
