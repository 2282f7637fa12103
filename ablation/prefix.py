"""A prefix cache: what the base model's decoder layers output on fixed batches, recorded once,
so that a pass over the same batches on an edited model runs only the layers it edited and above.

An edit changes writers of layers l and above only. Below l every layer sees the base model's
input and gives the base model's output, so replaying the recorded outputs there gives the full
pass's result bit for bit (the same batch, the same shapes, the same kernels from layer l up).
A skipped layer's forward is stood in for by one that returns its recorded output; the model's
own forward still runs the embedding, the masks and the rotary tables, which cost little, and
calls every layer in turn as it always does, so no architecture needs code of its own here.

The cache is for teacher-forced passes (KL, the generation-free refusal screen). It cannot serve
generation: the tokens a model generates differ once it is edited, and so do the lower layers'
outputs on them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from abliterate.ablation.architectures import decoder_layers
from abliterate.ablation.errors import AblationError


@dataclass(frozen=True)
class _Recorded:
    input_ids: torch.Tensor  # on the CPU: the batch a replay must be given again
    outputs: tuple[torch.Tensor, ...]  # each layer's output, where and as the layer gave it


class PrefixCache:
    """Every decoder layer's output on each recorded batch of one model.

    Record on the unedited model (:meth:`recording`); then a pass whose first edited layer is
    ``l`` runs under :meth:`starting_at` ``(l)``. Batches are named by any hashable key the caller
    keeps stable (a batch number); a replay checks that it is given the recorded token ids.
    """

    def __init__(self, model: torch.nn.Module):
        self.layers = decoder_layers(model)
        self._batches: dict[Hashable, _Recorded] = {}

    @property
    def nbytes(self) -> int:
        """The memory the recorded outputs hold, on whichever devices they are."""
        return sum(t.numel() * t.element_size() for recorded in self._batches.values() for t in recorded.outputs)

    @property
    def batches(self) -> int:
        return len(self._batches)

    @contextmanager
    def recording(self, key: Hashable, input_ids: torch.Tensor) -> Iterator[None]:
        """Around one forward pass of the unedited model on ``input_ids``: keeps each layer's output."""
        outputs: list[torch.Tensor | None] = [None] * len(self.layers)

        def keeper(index: int):
            def keep(_module, _inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise AblationError(f"decoder layer {index} returned {type(output).__name__}, not a tensor as transformers 5's "
                                        "layers do; the prefix cache cannot replay it")
                outputs[index] = output.detach()
            return keep

        handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        kept = tuple(output for output in outputs if output is not None)
        if len(kept) != len(self.layers):
            raise AblationError("a decoder layer did not run during the recorded pass; the prefix cache needs every layer")
        self._batches[key] = _Recorded(input_ids.detach().cpu().clone(), kept)

    @contextmanager
    def starting_at(self, first_layer: int, key: Hashable, input_ids: torch.Tensor) -> Iterator[None]:
        """Around one forward pass on the recorded batch ``key``: layers below ``first_layer``
        return their recorded outputs instead of computing them."""
        recorded = self._batches.get(key)
        if recorded is None or not torch.equal(recorded.input_ids, input_ids.detach().cpu()):
            raise AblationError(f"the prefix cache holds no recording of batch {key!r} with these tokens; "
                                "record it on the unedited model first")
        skipped = self.layers[:max(0, min(first_layer, len(self.layers)))]
        # An instance attribute shadows the class's forward; one already there (accelerate's
        # device hooks put theirs there) is put back afterwards.
        previous = [layer.__dict__.get("forward") for layer in skipped]
        for layer, output in zip(skipped, recorded.outputs):
            layer.forward = _replay(output)
        try:
            yield
        finally:
            for layer, forward in zip(skipped, previous):
                if forward is None:
                    del layer.forward
                else:
                    layer.forward = forward


def _replay(output: torch.Tensor):
    def forward(*_args, **_kwargs) -> torch.Tensor:
        return output
    return forward


def first_edited_layer(edited_layers: tuple[int, ...], num_layers: int) -> int:
    """The lowest layer an edit touched: where a cached pass starts (past the top when none was)."""
    return min(edited_layers, default=num_layers)
