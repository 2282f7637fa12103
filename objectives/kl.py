"""KL drift of an edited model from its base on harmless prompts.

The base model's next-token log-probabilities at the first ``k`` response positions are computed
once per worker (and can be saved); each trial then costs one batched forward pass. With ``k > 1``
the positions are teacher-forced on the base model's own greedy answer, so both models are
compared on the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
from safetensors.torch import load_file, save_file

from abliterate.ablation.errors import AblationError
from abliterate.ablation.prefix import PrefixCache
from abliterate.objectives.generation import generate_greedy

# How one batch's forward pass runs, given its number and token ids: PrefixCache.recording, or
# partial(PrefixCache.starting_at, first_layer) to replay the layers below first_layer.
BatchPass = Callable[[int, torch.Tensor], AbstractContextManager]


def kl_divergence(base_logprobs: torch.Tensor, edited_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(base || edited) per position: sum_v p_base(v) (log p_base(v) - log p_edited(v)).

    Inputs are log-probabilities [..., V]; the result has shape [...].
    """
    return (base_logprobs.exp() * (base_logprobs - edited_logprobs)).sum(dim=-1)


@torch.no_grad()
def response_logprobs(model, tokenizer, texts: Sequence[str], continuations: Sequence[Sequence[int]] | None = None,
                      batch_size: int = 16, prefix: BatchPass | None = None) -> torch.Tensor:
    """Next-token log-probs at the first response positions: float32 [N, k, V] on CPU.

    Position 0 predicts the first response token from the prompt; position j > 0 predicts token
    j after the prompt plus ``continuations[i][:j]``. Without continuations, k = 1. The model must
    accept per-row positions as ``logits_to_keep`` ([batch, k] indices), as transformers 5 models do.
    ``prefix(batch number, input ids)``, when given, is the context each batch's forward runs in:
    a :class:`PrefixCache`'s ``recording`` or a ``starting_at`` bound to a layer (see ``BatchPass``).
    """
    order, results = _in_batches(model, tokenizer, texts, continuations, batch_size, prefix,
                                 lambda _chunk, logprobs: logprobs)
    return torch.cat(results)[torch.tensor(order).argsort()]


@torch.no_grad()
def forced_logprobs(model, tokenizer, texts: Sequence[str], forced: Sequence[Sequence[int]], batch_size: int = 16,
                    prefix: BatchPass | None = None) -> torch.Tensor:
    """Log-probs [N, m] of each text's ``forced`` tokens (m of them, the same m for every text),
    each given the text and the forced tokens before it: one teacher-forced pass, float32 on CPU."""
    m = len(forced[0])
    if m < 1 or any(len(tokens) != m for tokens in forced):
        raise AblationError(f"forced continuations must all have the same length of at least 1, got {sorted({len(t) for t in forced})}")
    targets = torch.tensor([list(tokens) for tokens in forced])
    order, results = _in_batches(model, tokenizer, texts, [list(tokens)[:-1] for tokens in forced], batch_size, prefix,
                                 lambda chunk, logprobs: logprobs.gather(-1, targets[chunk].unsqueeze(-1).to(logprobs.device)).squeeze(-1))
    return torch.cat(results)[torch.tensor(order).argsort()]


def _in_batches(model, tokenizer, texts, continuations, batch_size, prefix, keep) -> tuple[list[int], list[torch.Tensor]]:
    """The rows in the order they ran, and ``keep(rows, log-probs [b, k, V])`` of each batch, on
    the CPU; ``keep`` runs where the model does, so a pick from the vocabulary moves only the pick."""
    k = len(continuations[0]) + 1 if continuations else 1
    device = next(model.parameters()).device
    every_prompt = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    every_forced = continuations or [[]] * len(texts)
    # Batches of similar lengths pad little; the rows come back in the given order.
    order = sorted(range(len(texts)), key=lambda i: len(every_prompt[i]))
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = order[start:start + batch_size]
        prompts = [every_prompt[i] for i in chunk]
        sequences = [every_prompt[i] + list(every_forced[i])[: k - 1] for i in chunk]
        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):  # right padding keeps every real position exact
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        positions = torch.stack([torch.arange(len(p) - 1, len(p) - 1 + k) for p in prompts]).to(device)
        # The output head (and any logit softcapping) runs only at the k picked positions of each
        # row, not at every prompt position; with a large vocabulary the head is a big share of a pass.
        with prefix(start, ids) if prefix else nullcontext():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                           logits_to_keep=positions).logits
        if logits.shape[:2] != positions.shape:
            raise AblationError(f"{type(model).__name__} ignored per-row logits_to_keep (logits {tuple(logits.shape)}, "
                                f"expected {tuple(positions.shape)} x vocabulary)")
        results.append(keep(chunk, torch.log_softmax(logits.float(), dim=-1)).cpu())
    return order, results


class KLScorer:
    """Mean KL(base || current model) over harmless prompts at the first ``k`` response tokens.

    Build it on the unedited model; call :meth:`score` after each bake. With ``prefix_cache`` the
    base pass also records every layer's output (:class:`~ablation.prefix.PrefixCache`), and a
    score given the first edited layer runs only the layers from there up, with the same result.
    """

    def __init__(self, model, tokenizer, texts: Sequence[str], k: int = 1, batch_size: int = 16, base: dict | None = None,
                 prefix_cache: bool = True):
        if not texts:
            raise AblationError("KL needs at least one harmless prompt")
        if k < 1:
            raise AblationError(f"KL token count must be at least 1, got {k}")
        self.model, self.tokenizer, self.texts, self.batch_size = model, tokenizer, list(texts), batch_size
        self.prefix = PrefixCache(model) if prefix_cache else None
        record = self.prefix.recording if self.prefix is not None else None
        if base is None:
            continuations = None
            if k > 1:
                answers = generate_greedy(model, tokenizer, self.texts, k - 1, batch_size)
                continuations = [_padded(ids, k - 1, tokenizer.eos_token_id) for ids in answers.token_ids]
            base = {"logprobs": response_logprobs(model, tokenizer, self.texts, continuations, batch_size, record),
                    "continuations": torch.tensor(continuations) if continuations else torch.zeros(len(self.texts), 0, dtype=torch.long)}
        elif record is not None:
            response_logprobs(model, tokenizer, self.texts, self._continuations(base["continuations"]), batch_size, record)
        self.base_logprobs = base["logprobs"]
        self.continuations = base["continuations"]
        if self.base_logprobs.shape[:2] != (len(self.texts), k):
            raise AblationError(f"cached base log-probs have shape {tuple(self.base_logprobs.shape[:2])}, expected {(len(self.texts), k)}; recompute the cache")

    def score(self, first_layer: int = 0) -> float:
        """Mean KL over prompts and positions for the model as it is now (e.g. baked). Layers
        below ``first_layer`` must be unedited: with the prefix cache they are not run."""
        prefix = partial(self.prefix.starting_at, first_layer) if self.prefix is not None and first_layer > 0 else None
        edited = response_logprobs(self.model, self.tokenizer, self.texts, self._continuations(self.continuations), self.batch_size, prefix)
        return float(kl_divergence(self.base_logprobs, edited).mean())

    @staticmethod
    def _continuations(continuations: torch.Tensor) -> list[list[int]] | None:
        return continuations.tolist() if continuations.shape[1] else None

    def save(self, path) -> None:
        save_file({"logprobs": self.base_logprobs.contiguous(), "continuations": self.continuations.contiguous()}, str(path))

    @staticmethod
    def load_base(path) -> dict:
        return load_file(str(path))


def _padded(ids: list[int], length: int, eos: int) -> list[int]:
    # An answer that ended early is continued with end-of-text, which the base model predicts.
    return (ids + [eos] * length)[:length]
