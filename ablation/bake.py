"""Bake an edit into a model in place, and put the exact original bits back.

The baker keeps a copy of only the tensors an edit touches, taken just before the first edit,
so :meth:`Baker.restore` is bit-exact and costs one copy per touched tensor. Copies stay on the
tensor's own device by default (fastest restore); ``keep_on="cpu"`` trades speed for device
memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ablation.architectures import Writer
from ablation.edit import ablate, post_norm_direction
from ablation.errors import AblationError
from ablation.profile import Profile


@dataclass(frozen=True)
class BakeReport:
    """What one bake did: how many tensors it edited and the bytes kept to undo it."""

    tensors: int
    saved_bytes: int
    layers: tuple[int, ...]


class Baker:
    """Applies :func:`ablation.edit.ablate` to a model's residual writers and undoes it."""

    def __init__(self, writers: Sequence[Writer], keep_on: str = "same"):
        if keep_on not in ("same", "cpu"):
            raise AblationError(f"keep_on must be 'same' or 'cpu', got {keep_on!r}")
        self.writers = list(writers)
        self.keep_on = keep_on
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def baked(self) -> bool:
        return bool(self._saved)

    @property
    def num_layers(self) -> int:
        return max(w.layer for w in self.writers) + 1

    @torch.no_grad()
    def bake(self, directions: torch.Tensor, profile: Profile, norm_preserving: bool = False) -> BakeReport:
        """Edit every writer whose profile weight is non-zero.

        ``directions`` is one direction [H] for all layers or one per layer [L, H]; they need
        not be unit length.
        """
        if self.baked:
            raise AblationError("model is already baked; restore() before baking again")
        if directions.dim() == 2 and directions.shape[0] != self.num_layers:
            raise AblationError(
                f"got directions for {directions.shape[0]} layers, the model has {self.num_layers}"
            )
        layers = set()
        for writer in self.writers:
            weight = profile.weight(writer.group, writer.layer)
            if weight == 0.0:
                continue
            r = directions[writer.layer] if directions.dim() == 2 else directions
            r = r.to(writer.weight.device, torch.float32)
            if writer.post_norm_scale is not None:
                r = post_norm_direction(r, writer.post_norm_scale)
            self._edit(writer.weight, r, weight, writer.residual_axis, norm_preserving)
            if writer.bias is not None:
                self._edit(writer.bias, r, weight, writer.bias.dim() - 1, False)
            layers.add(writer.layer)
        return BakeReport(len(self._saved), self.saved_bytes, tuple(sorted(layers)))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the original bits back into every edited tensor."""
        for tensor, original in reversed(self._saved):
            tensor.copy_(original)
        self._saved.clear()

    @contextmanager
    def baked_into(self, directions: torch.Tensor, profile: Profile, norm_preserving: bool = False) -> Iterator[BakeReport]:
        """Bake for the duration of a ``with`` block, restoring even on error."""
        report = self.bake(directions, profile, norm_preserving)
        try:
            yield report
        finally:
            self.restore()

    @property
    def saved_bytes(self) -> int:
        return sum(original.numel() * original.element_size() for _, original in self._saved)

    def _edit(self, tensor: torch.Tensor, r: torch.Tensor, weight: float, axis: int, norm_preserving: bool):
        device = "cpu" if self.keep_on == "cpu" else tensor.device
        self._saved.append((tensor, tensor.detach().to(device, copy=True)))
        if tensor.dim() == 3:
            # One expert at a time keeps the float32 working copy to a single [H, I] slice.
            for expert in tensor:
                expert.copy_(ablate(expert, r, weight, axis - 1, norm_preserving))
        else:
            tensor.copy_(ablate(tensor, r, weight, axis, norm_preserving))
