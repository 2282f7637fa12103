"""Attention heads that carry refusal: find them, and name the weight columns that are theirs.

An attention block writes into the residual stream through one output projection whose input is
the concatenation of its heads' outputs, ``heads x head_dim`` wide, whatever the number of
key/value heads (grouped-query attention shares keys and values, never outputs). Head ``h``'s
contribution to the residual is therefore ``W[:, h*d:(h+1)*d] @ x_h``, and removing a direction
from only its columns edits that head and no other. Linear-attention blocks (Qwen3.5) are split
the same way by their value heads.

A head's refusal score is the mean projection of its contribution on the refusal direction r,
harmful prompts minus harmless ones, at the last prompt token. The mean of a linear map is the
map of the mean, so the score needs only the mean input difference per layer
(:func:`mean_input_difference`), and can be taken for any r later (:func:`head_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from abliterate.ablation.architectures import ATTN, Writer, decoder_layers
from abliterate.ablation.errors import AblationError, UnsupportedLayout

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def head_layout(model: PreTrainedModel, writers: Sequence[Writer]) -> list[tuple[int, int]]:
    """(heads, head_dim) of each layer's attention output projection, in layer order."""
    config = model.config.get_text_config()
    layout = []
    for writer in (w for w in writers if w.group == ATTN):
        block = writer.name.rsplit(".", 2)[-2]
        heads = getattr(config, "linear_num_value_heads" if block == "linear_attn" else "num_attention_heads", None)
        width = writer.weight.shape[1] if writer.weight.dim() == 2 else None
        if not heads or width is None or width % heads:
            raise UnsupportedLayout(f"cannot split {writer.name} {tuple(writer.weight.shape)} into {heads} heads; "
                                    "head edits do not support this layout (open an issue with the model's config.json)")
        layout.append((int(heads), width // heads))
    if len(layout) != len(decoder_layers(model)):
        raise UnsupportedLayout(f"found {len(layout)} attention output projections for {len(decoder_layers(model))} layers")
    return layout


@torch.no_grad()
def capture_attention_inputs(model: torch.nn.Module, tokenizer, writers: Sequence[Writer], texts: Sequence[str],
                             batch_size: int = 16) -> list[torch.Tensor]:
    """Per layer, the input of its attention output projection at each text's last token:
    float32 [N, heads x head_dim] on the CPU (``texts`` already formatted, right-padded)."""
    if not texts:
        raise AblationError("no prompts to capture attention inputs from")
    attention = [w for w in writers if w.group == ATTN]
    captured: list[list[torch.Tensor]] = [[] for _ in attention]
    rows: torch.Tensor | None = None

    def hook(index):
        def store(_module, args):
            assert rows is not None  # set before each forward call
            inputs = args[0]
            captured[index].append(inputs[torch.arange(inputs.shape[0], device=inputs.device), rows.to(inputs.device)].float().cpu())
        return store

    handles = [model.get_submodule(w.name).register_forward_pre_hook(hook(i)) for i, w in enumerate(attention)]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                padding_side="right", add_special_tokens=False).to(device)
            rows = encoded["attention_mask"].sum(dim=1) - 1
            model(**encoded, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(parts) for parts in captured]


def mean_input_difference(harmful: Sequence[torch.Tensor], harmless: Sequence[torch.Tensor]) -> torch.Tensor:
    """[L, I] mean attention-output input, harmful minus harmless, per layer (zero-padded to the
    widest layer when widths differ)."""
    width = max(h.shape[1] for h in harmful)
    out = torch.zeros(len(harmful), width)
    for layer, (bad, good) in enumerate(zip(harmful, harmless)):
        out[layer, : bad.shape[1]] = bad.mean(dim=0) - good.mean(dim=0)
    return out


def head_scores(writers: Sequence[Writer], layout: Sequence[tuple[int, int]], input_difference: torch.Tensor,
                directions: torch.Tensor) -> torch.Tensor:
    """[L, max heads] score of every head: ``r_l . W_l[:, head] @ dx_l[head]`` with r one direction
    [H] or one per layer [L, H]; padding (layers with fewer heads) is -inf."""
    attention = [w for w in writers if w.group == ATTN]
    scores = torch.full((len(attention), max(h for h, _ in layout)), -torch.inf)
    for writer, (heads, dim) in zip(attention, layout):
        r = (directions[writer.layer] if directions.dim() == 2 else directions).float()
        along = r.to(writer.weight.device) @ writer.weight.float()  # [heads x head_dim]: what each input writes along r
        products = (along.cpu() * input_difference[writer.layer, : heads * dim]).view(heads, dim).sum(dim=-1)
        scores[writer.layer, :heads] = products
    return scores


def top_heads(scores: torch.Tensor, layout: Sequence[tuple[int, int]], count: int) -> dict[int, list[tuple[int, int]]]:
    """The ``count`` highest-scoring heads over all layers, as {layer: [(first column, end column)]}."""
    flat = scores.flatten()
    count = max(0, min(count, int(torch.isfinite(flat).sum())))
    chosen = torch.argsort(flat, descending=True, stable=True)[:count]
    columns: dict[int, list[tuple[int, int]]] = {}
    for index in sorted(int(i) for i in chosen):
        layer, head = divmod(index, scores.shape[1])
        dim = layout[layer][1]
        columns.setdefault(layer, []).append((head * dim, (head + 1) * dim))
    return columns
