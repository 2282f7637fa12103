"""A study's payload computed on its model: :func:`ablation.resolve.compute_payload` given the
study's chat format (how prompts reach the model) and refusal proxy (how the base model's answers
are labelled, for interventions that need a judge)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from abliterate.ablation.registry import PayloadContext
from abliterate.ablation.resolve import compute_payload as _compute
from abliterate.objectives.refusal import ChatFormat


def compute_payload(loaded, harmful: Sequence[str], harmless: Sequence[str], residuals: tuple[torch.Tensor, torch.Tensor],
                    space, proxy=None, chat: ChatFormat = ChatFormat(), batch_size: int = 16,
                    log: Callable[[str], None] = lambda line: None, labels: Sequence[str] | None = None,
                    sae: str | None = None) -> dict[str, torch.Tensor]:
    """Everything the trials of ``space`` bake from, on the extraction prompts (raw ``harmful`` and
    ``harmless``, whose residuals [N, L, H] are ``residuals``). ``proxy`` (prepared or not) labels
    the base model's answers, for an intervention that needs a judge (``amplify``). ``labels``:
    the category of each harmful prompt, for the cone; ``sae``: the study's SAE folder."""
    def refusals() -> Sequence[bool]:
        proxy.use_base(loaded)
        proxy.prepare(loaded, harmful)
        return proxy.refusals(loaded, harmful)

    context = PayloadContext(residuals, space, harmful, harmless, loaded, lambda prompts: chat.apply(loaded, prompts),
                             refusals if proxy is not None else None, batch_size, log, labels, sae)
    return _compute(context)
