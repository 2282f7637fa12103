"""Ablation weight profiles: how strongly each layer is edited.

A :class:`Kernel` maps a layer index to an ablation weight: ``peak_weight`` at layer ``peak``
(fractional positions allowed), falling to ``floor_weight`` at ``falloff`` layers away, and zero
(the layer is untouched) beyond. A :class:`Profile` holds one kernel per component group
(attention, MLP) and an optional range of layers outside which nothing is edited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from abliterate.ablation.errors import AblationError

SHAPES = ("tent", "gaussian")


@dataclass(frozen=True)
class Kernel:
    """A weight kernel over the layer stack.

    ``tent`` falls linearly from ``peak_weight`` to ``floor_weight`` over ``falloff`` layers;
    ``gaussian`` follows a bell (sigma = falloff / 2) rescaled to hit the same two end values.
    """

    shape: str = "tent"
    peak: float = 0.0
    peak_weight: float = 1.0
    floor_weight: float = 0.0
    falloff: float = 1.0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise AblationError(f"unknown kernel shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if not self.falloff > 0:
            raise AblationError(f"kernel falloff must be > 0 layers, got {self.falloff}")

    def weight(self, layer: int) -> float:
        distance = abs(layer - self.peak)
        if distance > self.falloff:
            return 0.0
        t = distance / self.falloff
        if self.shape == "gaussian":
            edge = math.exp(-2.0)  # exp(-falloff^2 / (2 sigma^2)) with sigma = falloff / 2
            t = (1.0 - math.exp(-2.0 * t * t)) / (1.0 - edge)
        return self.peak_weight + (self.floor_weight - self.peak_weight) * t


@dataclass(frozen=True)
class Profile:
    """One kernel per component group; groups without a kernel are not edited."""

    kernels: dict[str, Kernel] = field(default_factory=dict)
    first_layer: int = 0
    last_layer: int | None = None
    # Per-layer factors on every group's kernel weight (calibrated profiles); empty: all ones.
    layer_scale: tuple[float, ...] = ()

    def weight(self, group: str, layer: int) -> float:
        if layer < self.first_layer or (self.last_layer is not None and layer > self.last_layer):
            return 0.0
        kernel = self.kernels.get(group)
        weight = kernel.weight(layer) if kernel else 0.0
        return weight * self.layer_scale[layer] if self.layer_scale and weight else weight

    @classmethod
    def uniform(cls, weight: float = 1.0, groups=("attn", "mlp"), **range_) -> Profile:
        """Every layer of every group at ``weight`` (within the optional layer range)."""
        flat = Kernel("tent", 0.0, weight, weight, falloff=1e9)
        return cls({group: flat for group in groups}, **range_)
