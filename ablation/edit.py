"""The edit rule, as small pure functions.

For a tensor whose ``residual_axis`` indexes the residual stream, every slice along that axis is
a vector ``v`` the component can write into the residual. Abliteration removes the part of each
such vector along the unit direction ``r``:

    v <- v - w (r . v) r

which is ``W <- W - w r r^T W`` for an [H, in] weight and ``W <- W - w W r r^T`` for [in, H].
At ``w = 1`` the component can no longer write anything along ``r``.

The norm-preserving variant rescales each edited vector back to its original length, so the
component keeps its output scale; at ``w = 1`` the result is still orthogonal to ``r``.

Two relatives share the rule. :func:`ablate_subspace` removes a whole subspace at once,
``v <- v - w Q^T Q v`` for orthonormal rows Q [k, H] (a refusal cone); at ``w = 1`` the
component can write nothing in span(Q). :func:`amplify` adds ``b (c . v) c`` instead, so the
component's output along c grows by a factor ``1 + b`` and nothing else changes.

All arithmetic is in float32; the result has the input's dtype.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` scaled to length 1 along its last axis (float32)."""
    vector = vector.float()
    return vector / vector.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def ablate(
    tensor: torch.Tensor,
    direction: torch.Tensor,
    weight: float,
    residual_axis: int = 0,
    norm_preserving: bool = False,
) -> torch.Tensor:
    """Return ``tensor`` with ``weight`` times its component along ``direction`` removed.

    ``direction`` need not be unit length; it is normalised here.
    """
    r = unit(direction).to(tensor.device)
    original = tensor.float()
    # Broadcasting r along the residual axis keeps the weight's own memory layout, so the
    # result copies back into the parameter contiguously (no transposed views).
    shape = [1] * tensor.dim()
    shape[residual_axis] = -1
    r_along = r.view(shape)
    coefficients = torch.tensordot(r, original, dims=([0], [residual_axis])).unsqueeze(residual_axis)
    edited = torch.addcmul(original, r_along, coefficients, value=-weight)
    if norm_preserving:
        before = original.norm(dim=residual_axis, keepdim=True)
        after = edited.norm(dim=residual_axis, keepdim=True).clamp_min(_EPS)
        edited.mul_(before / after)
    return edited.to(tensor.dtype)


def post_norm_direction(direction: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The direction to edit along in a component whose output passes through a norm.

    A norm after the projection (Gemma) maps the component output ``y`` to
    ``scale * y / rms(y)``. That has no component along ``r`` exactly when ``y`` has none
    along ``scale * r``, so the edit must project against ``unit(scale * r)`` instead of ``r``.
    The same holds for :func:`amplify`: scaling ``y``'s component along ``unit(scale * c)`` by
    ``1 + b`` scales ``(scale * y) . c`` by exactly ``1 + b`` (the rms is one factor for all).
    """
    return unit(scale.float().to(direction.device) * direction.float())


def ablate_subspace(
    tensor: torch.Tensor,
    basis: torch.Tensor,
    weight: float,
    residual_axis: int = 0,
    norm_preserving: bool = False,
) -> torch.Tensor:
    """Return ``tensor`` with ``weight`` times its component in span(``basis``) removed.

    ``basis`` [k, H] must have orthonormal rows, or zero rows (which remove nothing); see
    :func:`ablation.cone.orthonormal_basis`. The norm-preserving variant rescales each edited
    vector to its original length, as :func:`ablate` does.
    """
    q = basis.float().to(tensor.device)
    original = tensor.float()
    vectors = original.movedim(residual_axis, -1)  # [..., H]
    edited = vectors - weight * ((vectors @ q.T) @ q)
    if norm_preserving:
        edited = edited * (vectors.norm(dim=-1, keepdim=True) / edited.norm(dim=-1, keepdim=True).clamp_min(_EPS))
    return edited.movedim(-1, residual_axis).to(tensor.dtype)


def amplify(tensor: torch.Tensor, direction: torch.Tensor, strength: float, residual_axis: int = 0) -> torch.Tensor:
    """Return ``tensor`` with its component along ``direction`` scaled by ``1 + strength``:
    ``W <- W + b c c^T W`` (activation addition baked into the weights, proportional to what the
    component already writes along c)."""
    return ablate(tensor, direction, -strength, residual_axis)
