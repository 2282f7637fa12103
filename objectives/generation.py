"""Batched greedy generation that stops each prompt as soon as its verdict is certain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass(frozen=True)
class Generation:
    """Responses (special tokens removed) and the new token ids of each, up to its end."""

    responses: list[str]
    token_ids: list[list[int]]

    @property
    def new_tokens(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]


class _VerdictReached(StoppingCriteria):
    """Stops a row once ``decided(response_so_far)`` is true."""

    def __init__(self, tokenizer, prompt_length: int, decided: Callable[[str], bool]):
        self.tokenizer, self.prompt_length, self.decided = tokenizer, prompt_length, decided

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.decided(t) for t in texts], device=input_ids.device)


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    decided: Callable[[str], bool] | None = None,
) -> Generation:
    """Greedy answers to formatted prompts; a row stops early when ``decided`` says so."""
    device = next(model.parameters()).device
    responses, token_ids = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
            padding_side="left", add_special_tokens=False,
        ).to(device)
        prompt_length = encoded["input_ids"].shape[1]
        stopping = StoppingCriteriaList([_VerdictReached(tokenizer, prompt_length, decided)] if decided else [])
        output = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, stopping_criteria=stopping,
            pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
        )
        new = output[:, prompt_length:]
        finished = (new == tokenizer.pad_token_id) | (new == tokenizer.eos_token_id)
        for row in range(new.shape[0]):
            if finished[row].any():
                # An end-of-text token belongs to the answer; padding after an early stop does not.
                end = int(finished[row].nonzero()[0])
                stop = end + 1 if new[row, end] == tokenizer.eos_token_id else end
            else:
                stop = new.shape[1]
            token_ids.append(new[row, :stop].tolist())
        responses += tokenizer.batch_decode(new, skip_special_tokens=True)
    return Generation(responses, token_ids)
