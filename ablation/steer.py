"""Activation steering at inference: add a vector to the residual stream after chosen layers.

An analysis tool (``abliterate dose --mode steer``), not an edit: nothing is written into the
weights, and the hooks are removed when the ``with`` block ends. The vector is added at the last
real prompt position of every row (found from the attention mask, so left or right padding both
work) and at every position produced after the prompt (decoding steps with a cache), which is
where the model decides and writes its answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from abliterate.ablation.architectures import decoder_layers
from abliterate.ablation.errors import AblationError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@contextmanager
def steered(model: PreTrainedModel, vectors: dict[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, decoder layer ``l``'s output gains ``vectors[l]`` ([H]) at the last
    prompt position and at every generated position. Raises :class:`AblationError` for a layer
    the model does not have or a vector of the wrong width."""
    layers = decoder_layers(model)
    hidden = model.config.get_text_config().hidden_size
    for layer, vector in vectors.items():
        if not 0 <= layer < len(layers):
            raise AblationError(f"cannot steer layer {layer}: the model has layers 0 to {len(layers) - 1}")
        if vector.shape != (hidden,):
            raise AblationError(f"a steering vector for layer {layer} has shape {tuple(vector.shape)}, the model's residual is [{hidden}]")
    state: dict[str, torch.Tensor | None] = {"last": None}

    def remember_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        rows, width = inputs.shape[:2]
        if mask is None or mask.dim() != 2:
            state["last"] = torch.full((rows,), width - 1, dtype=torch.long)
        elif mask.shape[1] == width:
            # A prompt pass: each row's last real token is its last position whose mask is one.
            positions = torch.arange(width, device=mask.device).expand_as(mask)
            state["last"] = torch.where(mask.bool(), positions, -1).max(dim=1).values
        else:
            state["last"] = None  # a decoding step on a cache: every new position is generated

    def add(vector):
        def hook(_module, _inputs, output):
            states = output[0] if isinstance(output, tuple) else output
            v = vector.to(states.device, states.dtype)
            if state["last"] is None:
                states = states + v
            else:
                rows = torch.arange(states.shape[0], device=states.device)
                states = states.clone()
                states[rows, state["last"].to(states.device)] += v
            return (states, *output[1:]) if isinstance(output, tuple) else states
        return hook

    handles = [model.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    try:
        handles += [layers[layer].register_forward_hook(add(vector)) for layer, vector in vectors.items()]
        yield
    finally:
        for handle in handles:
            handle.remove()
