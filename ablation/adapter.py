"""An edit as a LoRA adapter: the low-rank factors of what a bake adds to each writer's weight.

A server that holds one base model can load many adapters at once (PEFT, vLLM's and SGLang's
LoRA support) instead of one full copy per candidate. What a bake adds to a writer's matrix W is
``W' - W = B A`` with B [out, r] and A [r, in]:

* removing one direction r is rank 1 (``-w r (r^T W)``), a subspace of k directions rank k, and
  an amplification of the compliance direction one more; these factors are exact;
* norm preservation rescales every vector along the residual axis to its old length, a change
  of full rank: the adapter keeps its ``max_rank`` strongest singular directions, and the
  relative error of what it leaves out is recorded per writer (:attr:`Factors.error`).

The deltas are computed from the bake's own rules (:meth:`ablation.bake.Baker.plan`) in float32
on float32 copies, one matrix (one expert) at a time, never from the rounded baked weights, whose
rounding would be a full-rank part of the difference. A fused expert tensor [E, D1, D2] gets the
factors of each expert's matrix, laid out as PEFT's ``target_parameters`` expects them. An edit
that changes a bias cannot be carried by LoRA and is refused, as is one of head columns of
a matrix other than [hidden, heads x head_dim].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.errors import AblationError

# Singular values below this share of the largest are float32 rounding of an exact low-rank delta.
_NOISE = 1e-6
# Extra columns of the randomised range finder beyond the rank asked for.
_OVERSAMPLE = 8


@dataclass(frozen=True)
class Factors:
    """The adapter of one writer: ``up @ down`` is its delta (per expert for a fused tensor).

    ``name``: the writer's module path (a linear layer) or parameter path (a fused expert
    tensor); ``layer``: its decoder layer; ``up`` [D1, r] or [E, D1, r]; ``down`` [r, D2] or [E, r, D2], float32 on the CPU;
    ``error``: the largest relative Frobenius error ``|delta - up @ down| / |delta|`` over its
    matrices (0 where the factors are exact up to float32 rounding).
    """

    name: str
    layer: int
    up: torch.Tensor
    down: torch.Tensor
    error: float

    @property
    def rank(self) -> int:
        return self.up.shape[-1]

    @property
    def fused(self) -> bool:
        return self.up.dim() == 3


def low_rank(delta: torch.Tensor, max_rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(up [D1, r], down [r, D2], error)`` with ``up @ down`` the best rank-r approximation of
    ``delta`` [D1, D2] found by a seeded randomised SVD; r is the number of singular values above
    float32 noise, at most ``max_rank``, and at least 1. ``error`` is the relative Frobenius
    norm of what is left out (0 for a zero delta)."""
    if max_rank < 1:
        raise AblationError(f"the adapter rank must be at least 1, got {max_rank}")
    delta = delta.detach().float().cpu()
    size = float(delta.norm())
    if size == 0.0:
        return delta.new_zeros(delta.shape[0], 1), delta.new_zeros(1, delta.shape[1]), 0.0
    q = min(max_rank + _OVERSAMPLE, *delta.shape)
    with torch.random.fork_rng(devices=[]):  # the same factors on every run: an adapter rebuilds bit for bit
        torch.manual_seed(0)
        left, values, right = torch.svd_lowrank(delta, q=q, niter=2)
    rank = max(1, min(max_rank, int((values > _NOISE * values[0]).sum())))
    up = left[:, :rank] * values[:rank]
    down = right[:, :rank].T.contiguous()
    error = float((delta - up @ down).norm()) / size
    return up.contiguous(), down, error


def edit_factors(baker: Baker, edit: Edit, max_rank: int) -> list[Factors]:
    """The factors of every writer ``edit`` changes, without changing the model."""
    found = []
    for writer, rule, columns in baker.plan(edit):
        if columns is not None and (writer.weight.dim() != 2 or writer.residual_axis != 0):
            raise AblationError(f"{writer.name}: head edits need an [hidden, heads x head_dim] output projection, "
                                f"got {tuple(writer.weight.shape)} with the residual on axis {writer.residual_axis}")
        if writer.bias is not None and columns is None:
            bias = writer.bias.detach().float()
            if not torch.equal(rule(bias, bias.dim() - 1, False).float(), bias):
                raise AblationError(f"the edit changes the bias of {writer.name}, which a LoRA adapter cannot carry; "
                                    "export the full checkpoint (without --adapter)")
        matrices = writer.weight if writer.weight.dim() == 3 else writer.weight.unsqueeze(0)
        axis = writer.residual_axis - (1 if writer.weight.dim() == 3 else 0)
        ups, downs, error = [], [], 0.0
        for matrix in matrices:
            before = matrix.detach().float()
            after = before.clone()
            if columns is not None:
                for start, stop in columns:
                    after[:, start:stop] = rule(before[:, start:stop], 0, edit.norm_preserving)
            else:
                after = rule(before, axis, edit.norm_preserving)
            up, down, err = low_rank(after - before, max_rank)
            ups.append(up)
            downs.append(down)
            error = max(error, err)
        rank = max(up.shape[1] for up in ups)
        up, down = (torch.stack(parts) for parts in zip(*(_padded(u, d, rank) for u, d in zip(ups, downs))))
        fused = writer.weight.dim() == 3
        found.append(Factors(writer.name, writer.layer, up if fused else up[0], down if fused else down[0], error))
    if not found:
        raise AblationError("the edit changes no weight: there is no adapter to write")
    return found


def require_peft():
    """PEFT's ``(LoraConfig, get_peft_model)``, or a one-line error naming the extra that brings it."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise AblationError("--adapter writes a PEFT adapter, and PEFT is not installed here; "
                            "pip install 'abliterate[adapter]'") from None
    return LoraConfig, get_peft_model


def save_adapter(model, factors: Sequence[Factors], folder: Path) -> dict:
    """Write ``factors`` into ``folder`` as a PEFT LoRA adapter of ``model``: adapter_config.json
    and adapter_model.safetensors, one rank for every writer (the largest; the others padded with
    zeros) and lora_alpha equal to it, so that the adapter adds exactly ``up @ down``. ``model``
    is left as it was. Returns the adapter's rank, its largest error and how many writers it holds."""
    LoraConfig, get_peft_model = require_peft()
    rank = max(f.rank for f in factors)
    if any(f.fused for f in factors):
        # PEFT renames the module targets of MoE models written for transformers 4 (any name ending
        # in down_proj becomes the fused experts' parameter), which would drop a dense or shared
        # expert's down_proj; parameter targets are taken as written.
        modules, parameters = [], [f.name if f.fused else f"{f.name}.weight" for f in factors]
    else:
        modules, parameters = [f.name for f in factors], []
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=modules or None, target_parameters=parameters or None)
    peft_model = get_peft_model(model, config)
    try:
        layers = {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
                  if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}
        for found in factors:
            layer = layers[found.name] if not found.fused else _parameter_wrapper(layers, found.name)
            up, down = _padded(found.up, found.down, rank)
            if found.fused:
                up, down = _peft_expert_layout(up, down, getattr(layer.get_base_layer(), "is_transposed", False))
            with torch.no_grad():
                layer.lora_B["default"].weight.copy_(up)
                layer.lora_A["default"].weight.copy_(down)
        peft_model.save_pretrained(str(folder))
    finally:
        peft_model.unload()
    return {"rank": rank, "max_error": max(f.error for f in factors), "writers": len(factors), "peft_type": "LORA"}


def _parameter_wrapper(layers: dict, name: str):
    """PEFT's wrapper of the 3-D parameter ``name``: where two parameters of one experts module
    are targeted (down_proj and a read-side gate_up_proj), PEFT nests one wrapper in the other."""
    module, parameter = name.rsplit(".", 1)
    while module in layers:
        if getattr(layers[module], "parameter_name", None) == parameter:
            return layers[module]
        module += ".base_layer"
    raise AblationError(f"PEFT made no adapter layer for {name}; export the full checkpoint (without --adapter)")


def _padded(up: torch.Tensor, down: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``up`` [..., D1, r] and ``down`` [..., r, D2] with zero columns and rows up to ``rank``:
    the same product."""
    extra = rank - up.shape[-1]
    return torch.nn.functional.pad(up, (0, extra)), torch.nn.functional.pad(down, (0, 0, 0, extra))


def _peft_expert_layout(up: torch.Tensor, down: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's (lora_B [out, r x E], lora_A [r x E, in]) for per-expert factors up [E, D1, r] and
    down [E, r, D2]: expert e's delta is ``lora_B[:, r, e] @ lora_A[e, r, :]`` read as [E, D1, D2]
    (as [E, D2, D1] transposed, for expert modules that say ``is_transposed``)."""
    if transposed:
        up, down = down.transpose(1, 2), up.transpose(1, 2)  # delta[e]^T = down^T up^T
    experts, _, rank = up.shape
    lora_b = up.permute(1, 2, 0).reshape(up.shape[1], rank * experts)
    lora_a = down.reshape(experts * rank, down.shape[2])
    return lora_b, lora_a
