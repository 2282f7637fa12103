"""Bake an edit into a model in place, and put the exact original bits back.

The baker keeps a copy of only the tensors an edit touches, taken just before the first edit,
so :meth:`Baker.restore` is bit-exact and costs one copy per touched tensor. Copies stay on the
tensor's own device by default (fastest restore); ``keep_on="cpu"`` trades speed for device
memory.

One bake applies, to every writer its profile gives a non-zero weight w:

* the removal: of one direction ([H] for all layers, [L, H] per layer) by
  :func:`ablation.edit.ablate`, or of a subspace per layer ([L, k, H], orthonormal rows) by
  :func:`ablation.edit.ablate_subspace`;
* then, with ``amplify``, :func:`ablation.edit.amplify` of a compliance direction c by b
  (``W <- W + b c c^T W``, biases too);
* a writer whose output passes through a norm (Gemma) is edited against the corrected
  directions of :func:`ablation.edit.post_norm_direction`, so that the removal and the
  amplification act on what the norm passes on, not on the writer's raw output;
* with ``heads``, an attention writer is edited only in the input columns of the heads named for
  its layer (o_proj's input is heads x head_dim), and not at all in other layers; its bias, which
  belongs to no head, is left alone. MLP writers are edited as usual.

A baker built by :meth:`Baker.for_model` also holds the model's residual readers
(:mod:`ablation.readers`); the same rule edits them, along their input axis and against the
direction as their input norm passes it on, when the profile has a kernel for their group. A
profile with a kernel for a group the baker holds nothing of is refused, never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from abliterate.ablation.architectures import ATTN, Writer, find_writers
from abliterate.ablation.cone import orthonormal_basis
from abliterate.ablation.edit import ablate, ablate_subspace, post_norm_direction
from abliterate.ablation.edit import amplify as amplify_
from abliterate.ablation.errors import AblationError
from abliterate.ablation.profile import Profile


@dataclass(frozen=True)
class BakeReport:
    """What one bake did: how many tensors it edited and the bytes kept to undo it."""

    tensors: int
    saved_bytes: int
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Amplification:
    """Amplify ``direction`` ([H], or [L, H] per layer) by ``strength`` b in every edited writer."""

    direction: torch.Tensor
    strength: float


# Column ranges [start, stop) of an attention writer's input, per layer: the heads to edit.
HeadColumns = Mapping[int, Sequence[tuple[int, int]]]
# rule(tensor, residual_axis, norm_preserving) -> the edited tensor (see Baker.plan)
Rule = Callable[[torch.Tensor, int, bool], torch.Tensor]


@dataclass(frozen=True)
class Edit:
    """One edit, as a value: what :meth:`Baker.bake` applies (see the module docstring).

    ``directions``: one direction [H] for all layers, one per layer [L, H], or an orthonormal
    basis per layer [L, k, H] (removed as a subspace); single directions need not be unit length.
    ``profile``: each writer's weight. ``norm_preserving``: edited vectors keep their length.
    ``amplify``: a compliance direction amplified after the removal. ``heads``: attention
    writers are edited only in these columns (and not at all in other layers).
    :func:`ablation.resolve.resolve` makes one from a candidate and the study's payload.
    """

    directions: torch.Tensor
    profile: Profile
    norm_preserving: bool = False
    amplify: Amplification | None = None
    heads: HeadColumns | None = None


class Baker:
    """Applies :func:`ablation.edit.ablate` to a model's residual writers and undoes it."""

    def __init__(self, writers: Sequence[Writer], keep_on: str = "same"):
        if keep_on not in ("same", "cpu"):
            raise AblationError(f"keep_on must be 'same' or 'cpu', got {keep_on!r}")
        self.writers = list(writers)
        self.keep_on = keep_on
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def for_model(cls, model, keep_on: str = "same") -> Baker:
        """A baker of every matrix of ``model`` an edit may change: its writers, then its readers."""
        from abliterate.ablation.readers import find_readers

        return cls(find_writers(model) + find_readers(model), keep_on)

    @property
    def baked(self) -> bool:
        return bool(self._saved)

    @property
    def num_layers(self) -> int:
        return max(w.layer for w in self.writers) + 1

    @torch.no_grad()
    def bake(self, edit: Edit) -> BakeReport:
        """Apply ``edit`` to every writer whose profile weight is non-zero (see the module docstring)."""
        if self.baked:
            raise AblationError("model is already baked; restore() before baking again")
        layers = set()
        for writer, rule, columns in self.plan(edit):
            if columns is not None:
                self._edit_columns(writer, columns, rule, edit.norm_preserving)
            else:
                self._edit(writer.weight, rule, writer.residual_axis, edit.norm_preserving)
                if writer.bias is not None:
                    self._edit(writer.bias, rule, writer.bias.dim() - 1, False)
            layers.add(writer.layer)
        return BakeReport(len(self._saved), self.saved_bytes, tuple(sorted(layers)))

    def plan(self, edit: Edit) -> Iterator[tuple[Writer, Rule, Sequence[tuple[int, int]] | None]]:
        """What :meth:`bake` does, writer by writer, touching nothing: each writer ``edit``
        changes, its ``rule(tensor, residual_axis, norm_preserving)`` (the edited tensor, float32
        inside, in the tensor's dtype), and the head columns it applies to (None: the whole
        weight, and the bias with ``norm_preserving`` False)."""
        directions, profile, amplify, heads = edit.directions, edit.profile, edit.amplify, edit.heads
        if directions.dim() >= 2 and directions.shape[0] != self.num_layers:
            raise AblationError(
                f"got directions for {directions.shape[0]} layers, the model has {self.num_layers}"
            )
        if amplify is not None and amplify.direction.dim() == 2 and amplify.direction.shape[0] != self.num_layers:
            raise AblationError(f"got a compliance direction for {amplify.direction.shape[0]} layers, the model has {self.num_layers}")
        held = {writer.group for writer in self.writers}
        if missing := sorted(set(profile.kernels) - held):
            raise AblationError(f"the edit weights {', '.join(missing)}, and this baker holds no such matrix; "
                                "make it with Baker.for_model(model), which finds the readers too")
        for writer in self.writers:
            weight = profile.weight(writer.group, writer.layer)
            columns = None if heads is None or writer.group != ATTN else heads.get(writer.layer, ())
            if weight == 0.0 or columns == ():
                continue
            r = directions[writer.layer] if directions.dim() >= 2 else directions
            r = r.to(writer.weight.device, torch.float32)
            if writer.norm_scale is not None:
                if r.dim() == 2:
                    scale = writer.norm_scale.float().to(r.device)
                    r = orthonormal_basis(scale * r).to(r.device)
                else:
                    r = post_norm_direction(r, writer.norm_scale)
            c = None
            if amplify is not None:
                c = amplify.direction[writer.layer] if amplify.direction.dim() == 2 else amplify.direction
                c = c.to(writer.weight.device, torch.float32)
                if writer.norm_scale is not None:
                    c = post_norm_direction(c, writer.norm_scale)

            def rule(tensor, axis, keep_norm, r=r, c=c, weight=weight):
                edited = (ablate_subspace if r.dim() == 2 else ablate)(tensor, r, weight, axis, keep_norm)
                return amplify_(edited, c, amplify.strength, axis) if c is not None and amplify is not None else edited

            yield writer, rule, columns

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the original bits back into every edited tensor."""
        for tensor, original in reversed(self._saved):
            tensor.copy_(original)
        self._saved.clear()

    @contextmanager
    def baked_into(self, edit: Edit) -> Iterator[BakeReport]:
        """Bake ``edit`` for the duration of a ``with`` block, restoring even on error."""
        report = self.bake(edit)
        try:
            yield report
        finally:
            self.restore()

    @property
    def saved_bytes(self) -> int:
        return sum(original.numel() * original.element_size() for _, original in self._saved)

    def _keep(self, tensor: torch.Tensor) -> None:
        device = "cpu" if self.keep_on == "cpu" else tensor.device
        self._saved.append((tensor, tensor.detach().to(device, copy=True)))

    def _edit(self, tensor: torch.Tensor, rule, axis: int, norm_preserving: bool):
        self._keep(tensor)
        if tensor.dim() == 3:
            # One expert at a time keeps the float32 working copy to a single [H, I] slice.
            for expert in tensor:
                expert.copy_(rule(expert, axis - 1, norm_preserving))
        else:
            tensor.copy_(rule(tensor, axis, norm_preserving))

    def _edit_columns(self, writer: Writer, columns: Sequence[tuple[int, int]], rule, norm_preserving: bool):
        tensor = writer.weight
        if tensor.dim() != 2 or writer.residual_axis != 0:
            raise AblationError(f"{writer.name}: head edits need an [hidden, heads x head_dim] output projection, "
                                f"got {tuple(tensor.shape)} with the residual on axis {writer.residual_axis}")
        self._keep(tensor)
        for start, stop in columns:
            tensor[:, start:stop] = rule(tensor[:, start:stop], 0, norm_preserving)
