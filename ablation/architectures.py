"""Find every matrix that writes into the residual stream, per architecture.

A *writer* is one parameter whose output is added to the residual stream of a decoder layer
(attention output, linear-attention output, MLP down projection, the fused down projection of
all routed experts, a shared expert's down projection), plus its bias if it has one.

Each writer records its *residual axis*: the dimension of the weight that indexes the residual
stream (0 for an ``nn.Linear`` weight [H, in]; 1 for fused experts [E, H, I]; 2 for gpt-oss
experts [E, I, H] used as ``x @ W[e]``). The edit rule in :mod:`ablation.edit` only needs that
axis, so one rule covers every layout.

The walk is strict: every child of a decoder layer, of its attention block and of its MLP block
must be recognised, or :class:`~ablation.errors.UnsupportedLayout` names the module that could
not be placed. An unknown layout is an error, never a quieter ablation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import torch
from torch import nn

from abliterate.ablation.errors import UnsupportedLayout

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ATTN = "attn"
MLP = "mlp"
GROUPS = (ATTN, MLP)


@dataclass(frozen=True)
class Architecture:
    """What differs between the supported decoder layouts.

    ``experts_residual_axis`` is the residual axis of the fused 3-D expert down projection, and
    ``experts_input_axis`` that of the fused gate/up projection. ``post_norms`` maps a group to
    the layer norm applied to that group's output before it is added to the residual (Gemma);
    ``mlp_input_norm`` is the norm the MLP reads the residual through. ``norm_scale`` turns a
    norm's weight into its scale.
    """

    experts_residual_axis: int = 1
    experts_input_axis: int = 2
    post_norms: tuple[tuple[str, str], ...] = ()
    mlp_input_norm: str = "post_attention_layernorm"
    norm_scale: Callable[[torch.Tensor], torch.Tensor] = lambda weight: weight.float()  # a plain norm's scale is its weight


_DENSE = Architecture()
_GEMMA = Architecture(
    post_norms=((ATTN, "post_attention_layernorm"), (MLP, "post_feedforward_layernorm")),
    mlp_input_norm="pre_feedforward_layernorm",
    norm_scale=lambda weight: 1.0 + weight.float(),
)
# Qwen3-Next and Qwen3.5 centre their norm weights on zero, as Gemma does (scale 1 + weight).
_QWEN_NEXT = Architecture(norm_scale=lambda weight: 1.0 + weight.float())

ARCHITECTURES: dict[str, Architecture] = {
    **dict.fromkeys(
        [
            "llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe",
        ],
        _DENSE,
    ),
    **dict.fromkeys(["qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next"], _QWEN_NEXT),
    "gpt_oss": Architecture(experts_residual_axis=2, experts_input_axis=1),
    **dict.fromkeys(["gemma2", "gemma3", "gemma3_text"], _GEMMA),
}

# Children that never write into the residual stream, per block. Anything else is an error.
_LAYER_CHILDREN = {
    "self_attn", "linear_attn", "mlp",
    "input_layernorm", "post_attention_layernorm",
    "pre_feedforward_layernorm", "post_feedforward_layernorm",
    "resid_attn_dropout", "resid_mlp_dropout", "dropout",
}
_ATTN_OUTPUTS = ("o_proj", "out_proj")
_MLP_INPUTS = {"gate_proj", "up_proj", "gate_up_proj", "act_fn", "activation_fn", "gate", "router", "shared_expert_gate"}
_SHARED_EXPERTS = ("shared_expert", "shared_experts")


@dataclass(frozen=True)
class Writer:
    """One parameter that writes into the residual stream of decoder layer ``layer`` (or, in a
    read group, reads it: :mod:`ablation.readers`).

    ``norm_scale``: the scale of the norm between the parameter and the residual stream, which
    a direction passes through on its way (a writer's post-norm, Gemma; a reader's input norm);
    None when there is none.
    """

    layer: int
    group: str
    name: str
    weight: torch.Tensor  # a parameter (nn.Linear types its weight and bias as tensors)
    residual_axis: int
    bias: torch.Tensor | None = None
    norm_scale: torch.Tensor | None = None

    @property
    def experts(self) -> int | None:
        return self.weight.shape[0] if self.weight.dim() == 3 else None


def architecture_of(config) -> Architecture:
    """The adapter for a model config; raises UnsupportedLayout for unknown model types."""
    model_type = config.get_text_config().model_type
    if model_type not in ARCHITECTURES and config.model_type in ARCHITECTURES:
        model_type = config.model_type
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedLayout(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))} (open an issue with the model's config.json)"
        ) from None


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layer list of a causal LM or of the language model inside a multimodal one."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedLayout(
            f"cannot find the decoder layers of {type(model).__name__} "
            "(expected model.get_decoder().layers)"
        )
    return layers


def find_writers(model: PreTrainedModel) -> list[Writer]:
    """Every residual writer of ``model``, in layer order, attention before MLP."""
    arch = architecture_of(model.config)
    hidden = model.config.get_text_config().hidden_size
    layers = decoder_layers(model)
    prefix = path_of(model, layers)
    writers: list[Writer] = []
    for index, layer in enumerate(layers):
        layer_path = f"{prefix}.{index}"
        writers.extend(_layer_writers(arch, index, layer, layer_path, hidden))
    return writers


def _layer_writers(arch: Architecture, index: int, layer: nn.Module, path: str, hidden: int):
    for name, child in layer.named_children():
        if name not in _LAYER_CHILDREN:
            cannot_place(f"{path}.{name}", child, "unknown child of a decoder layer")
    scales = {
        group: arch.norm_scale(getattr(layer, norm).weight.detach())
        for group, norm in arch.post_norms
    }
    attention = [n for n in ("self_attn", "linear_attn") if hasattr(layer, n)]
    if len(attention) != 1:
        cannot_place(path, layer, f"expected one self_attn or linear_attn block, found {attention or 'none'}")
    attn_name = attention[0]
    attn = getattr(layer, attn_name)
    # An attention block writes into the residual only through its output projection, so its
    # other children (q/k/v, norms, convolutions, gates) need no placing.
    out_name = next((n for n in _ATTN_OUTPUTS if isinstance(getattr(attn, n, None), nn.Linear)), None)
    if out_name is None:
        cannot_place(f"{path}.{attn_name}", attn, "no o_proj/out_proj output projection")
    yield _linear_writer(index, ATTN, f"{path}.{attn_name}.{out_name}", getattr(attn, out_name), hidden, scales.get(ATTN))

    if not hasattr(layer, "mlp"):
        cannot_place(path, layer, "no mlp block")
    yield from _mlp_writers(arch, index, layer.mlp, f"{path}.mlp", hidden, scales.get(MLP))


def _mlp_writers(arch, index, mlp, path, hidden, scale):
    found = False
    for name, child in mlp.named_children():
        child_path = f"{path}.{name}"
        if name == "down_proj" and isinstance(child, nn.Linear):
            yield _linear_writer(index, MLP, child_path, child, hidden, scale)
        elif name == "experts":
            yield _experts_writer(arch, index, child, child_path, hidden, scale)
        elif name in _SHARED_EXPERTS:
            down = getattr(child, "down_proj", None)
            if not isinstance(down, nn.Linear):
                cannot_place(child_path, child, "shared expert without a down_proj Linear")
            yield _linear_writer(index, MLP, f"{child_path}.down_proj", down, hidden, scale)
        elif name in _MLP_INPUTS:
            continue
        else:
            cannot_place(child_path, child, "unknown child of an MLP block")
        found = found or name in ("down_proj", "experts")
    if not found:
        cannot_place(path, mlp, "MLP block with neither down_proj nor experts")


def _linear_writer(index, group, path, linear: nn.Linear, hidden, scale) -> Writer:
    if linear.weight.shape[0] != hidden:
        cannot_place(path, linear, f"weight {tuple(linear.weight.shape)} does not output the hidden size {hidden}")
    return Writer(index, group, path, linear.weight, 0, linear.bias, scale)


def _experts_writer(arch, index, experts: nn.Module, path, hidden, scale) -> Writer:
    weight = getattr(experts, "down_proj", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 3:
        cannot_place(path, experts, "experts without a fused 3-D down_proj parameter")
    axis = arch.experts_residual_axis
    if weight.shape[axis] != hidden:
        cannot_place(path, experts, f"down_proj {tuple(weight.shape)} has no hidden size {hidden} at axis {axis}")
    bias = getattr(experts, "down_proj_bias", None)
    return Writer(index, MLP, f"{path}.down_proj", weight, axis, bias, scale)


def path_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise UnsupportedLayout("decoder layers are not registered submodules of the model")


def cannot_place(path: str, module: nn.Module, why: str) -> NoReturn:
    raise UnsupportedLayout(
        f"cannot place module {path!r} ({type(module).__name__}): {why}; "
        "this layout is not supported yet (open an issue with the model's config.json)"
    )
