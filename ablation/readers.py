"""Find every matrix that reads the residual stream into a decoder layer, per architecture.

A *reader* takes the residual stream, through the layer's input norm, as its input: the
attention block's input projections (q, k, v, a fused qkv, a linear-attention block's
``in_proj_*``) and the MLP's (gate, up, a fused gate_up, the routed experts' fused gate_up, a
shared expert's gate and up). Removing the direction there, ``W <- W - w W u u^T`` along the
reader's input axis with ``u`` the direction as the input norm passes it on (``scale * r``,
normalised), keeps the layer from reading it; ablation keeps the layers from writing it.

Readers are :class:`~ablation.architectures.Writer` records in the groups :data:`ATTN_READ` and
:data:`MLP_READ`, so one bake, one restore and one edit rule serve both sides: a profile edits
them only when it holds a kernel for their group. Their ``bias`` is None: a bias is added after
the read and needs no edit.

Routers and a shared expert's gate read the residual too, but they choose which experts run:
they are left as they are, so a read-side edit never changes routing. The walk is as strict as
the writers': a child of an attention or MLP block that is neither a known reader nor known to
read nothing is an :class:`~ablation.errors.UnsupportedLayout`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from abliterate.ablation.architectures import (
    Architecture,
    Writer,
    architecture_of,
    cannot_place,
    decoder_layers,
    path_of,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

ATTN_READ = "attn-read"
MLP_READ = "mlp-read"
READ_GROUPS = (ATTN_READ, MLP_READ)

_ATTN_READERS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a",
                 "in_proj_qkvz", "in_proj_ba")
# Children of an attention block that read no residual: its output (a writer), the norms and
# convolution inside it, rotary tables, dropout.
_ATTN_OTHERS = ("o_proj", "out_proj", "q_norm", "k_norm", "norm", "conv1d", "rotary_emb", "attn_dropout", "dropout")
_MLP_READERS = ("gate_proj", "up_proj", "gate_up_proj")
_ROUTERS = ("gate", "router", "shared_expert_gate")  # read the residual, choose experts: never edited
_MLP_OTHERS = ("down_proj", "act_fn", "activation_fn", *_ROUTERS)


def find_readers(model: PreTrainedModel) -> list[Writer]:
    """Every residual reader of ``model``, in layer order, attention before MLP."""
    arch = architecture_of(model.config)
    hidden = model.config.get_text_config().hidden_size
    layers = decoder_layers(model)
    prefix = path_of(model, layers)
    return [reader for index, layer in enumerate(layers) for reader in _layer_readers(arch, index, layer, f"{prefix}.{index}", hidden)]


def _layer_readers(arch: Architecture, index: int, layer: nn.Module, path: str, hidden: int) -> Iterator[Writer]:
    attn_name = "self_attn" if hasattr(layer, "self_attn") else "linear_attn"
    attn_scale = _norm_scale(arch, layer, "input_layernorm", path)
    for name, child in getattr(layer, attn_name).named_children():
        if name in _ATTN_READERS:
            yield _linear_reader(index, ATTN_READ, f"{path}.{attn_name}.{name}", child, hidden, attn_scale)
        elif name not in _ATTN_OTHERS:
            cannot_place(f"{path}.{attn_name}.{name}", child, "unknown child of an attention block (reader or not?)")
    mlp_scale = _norm_scale(arch, layer, arch.mlp_input_norm, path)
    yield from _mlp_readers(arch, index, layer.mlp, f"{path}.mlp", hidden, mlp_scale)


def _mlp_readers(arch: Architecture, index: int, mlp, path: str, hidden: int, scale) -> Iterator[Writer]:
    for name, child in mlp.named_children():
        child_path = f"{path}.{name}"
        if name in _MLP_READERS:
            yield _linear_reader(index, MLP_READ, child_path, child, hidden, scale)
        elif name == "experts":
            weight = getattr(child, "gate_up_proj", None)
            axis = arch.experts_input_axis
            if not isinstance(weight, nn.Parameter) or weight.dim() != 3 or weight.shape[axis] != hidden:
                cannot_place(child_path, child, f"experts without a fused 3-D gate_up_proj reading the hidden size {hidden} at axis {axis}")
            yield Writer(index, MLP_READ, f"{child_path}.gate_up_proj", weight, axis, None, scale)
        elif name in ("shared_expert", "shared_experts"):
            for inner in ("gate_proj", "up_proj"):
                yield _linear_reader(index, MLP_READ, f"{child_path}.{inner}", getattr(child, inner, None), hidden, scale)
        elif name not in _MLP_OTHERS:
            cannot_place(child_path, child, "unknown child of an MLP block (reader or not?)")


def _linear_reader(index: int, group: str, path: str, linear, hidden: int, scale) -> Writer:
    if not isinstance(linear, nn.Linear) or linear.weight.shape[1] != hidden:
        cannot_place(path, linear, f"expected a Linear reading the hidden size {hidden}")
    return Writer(index, group, path, linear.weight, 1, None, scale)


def _norm_scale(arch: Architecture, layer: nn.Module, norm: str, path: str) -> torch.Tensor:
    module = getattr(layer, norm, None)
    weight = getattr(module, "weight", None)
    if weight is None:
        cannot_place(f"{path}.{norm}", layer, f"no {norm} with a weight before the block it feeds")
    return arch.norm_scale(weight.detach())
