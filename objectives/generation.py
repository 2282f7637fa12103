"""Batched greedy generation with continuous batching: finished prompts leave, waiting ones join.

A row is over at an end-of-text token, at ``max_new_tokens``, or as soon as ``decided`` says its
verdict is certain. Finished rows leave the running batch (their cache rows and attention-mask rows
are removed), and once enough slots are free the next waiting prompts are prefilled on their own
and merged into the running cache. So a pass costs about (total new tokens / batch size) decoding
steps plus a tail, not the sum of every batch's longest answer. ``model.generate`` does neither: it
steps a whole batch until its last row ends.

Where decoding is bound by reading the weights (a CPU, small batches, a large model on a GPU), the
number of steps is what costs time, and refilling is what cuts it; bench/RESULTS.md has figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import cache_utils
from transformers.cache_utils import (
    BaseQuantizedLayer,
    Cache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionLayer,
)

# Caches hold placeholder layers only from transformers 5.23 on; before, no layer is one.
DummyLayer = getattr(cache_utils, "DummyLayer", type("DummyLayer", (), {}))


@dataclass(frozen=True)
class Generation:
    """Responses (special tokens removed) and the new token ids of each, up to its end."""

    responses: list[str]
    token_ids: list[list[int]]
    complete: bool = True  # False when ``stop`` ended the pass before every answer was over

    @property
    def new_tokens(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]


@dataclass
class _Batch:
    """Rows being decoded together: the state between two forward calls.

    ``mask`` covers the cached columns, left-padded per row; ``tokens`` are each row's newest token
    (not yet in the cache) and ``positions`` its position.
    """

    prompts: list[int]  # the prompt index of each row
    cache: Cache
    mask: torch.Tensor  # [rows, cached columns]
    positions: torch.Tensor  # [rows, 1]
    tokens: torch.Tensor  # [rows]


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    decided: Callable[[str], bool] | None = None,
    refill: bool = True,
    stop: Callable[[], bool] | None = None,
) -> Generation:
    """Greedy answers to formatted prompts, at most ``batch_size`` of them decoded at a time.

    Plain greedy decoding (argmax at every step): sampling, penalties and other logits processors
    in the model's ``generation_config`` are not applied. A row ends after ``max_new_tokens``
    tokens, at an end-of-text token (the model's ``generation_config.eos_token_id`` or the
    tokenizer's), or at the first token after which ``decided(response_so_far)`` is true (the
    response is the new tokens decoded with special tokens skipped). ``token_ids[i]`` holds the
    new tokens of prompt ``i`` up to and including the one that ended it, with no padding.

    Prompts join in order. With ``refill`` (and a cache whose layers are all of the kinds
    :func:`_can_merge` knows), waiting prompts join a running batch as soon as a quarter of its
    slots, or all of them that wait, fit; otherwise the next ones start when the whole batch has
    ended. Each answer is the one the prompt gets decoded alone, up to floating-point differences
    of batched arithmetic.

    ``stop`` is asked after every forward call; once it says true the pass ends at once and the
    answers so far come back with ``complete=False`` (a caller that already knows its verdict,
    such as a refusal pass whose trial can no longer reach the front, saves the rest).
    """
    answers: list[list[int]] = [[] for _ in texts]
    if max_new_tokens < 1 or not texts:
        return Generation([""] * len(texts), answers)
    device = next(model.parameters()).device
    ends = _end_token_ids(model, tokenizer)
    # Each join is one more forward call; joining only once a quarter of the batch is free keeps
    # that to at most four calls per batch's worth of answers.
    refill_at = max(1, batch_size // 4)
    open_ = [True] * len(texts)  # by prompt; a row that cannot leave the batch stays, closed
    waiting = list(range(len(texts)))[::-1]  # a stack: the next prompt is last
    running: _Batch | None = None

    def settle(batch: _Batch) -> _Batch | None:
        """Records each open row's newest token, closes finished rows and drops them if it can."""
        still = []
        for prompt, token in zip(batch.prompts, batch.tokens.tolist()):
            if open_[prompt]:
                answers[prompt].append(token)
                open_[prompt] = token not in ends and len(answers[prompt]) < max_new_tokens
                if open_[prompt]:
                    still.append(prompt)
        if decided and still:
            verdicts = tokenizer.batch_decode([answers[prompt] for prompt in still], skip_special_tokens=True)
            for prompt, text in zip(still, verdicts):
                open_[prompt] = not decided(text)
        keep = [row for row, prompt in enumerate(batch.prompts) if open_[prompt]]
        if not keep:
            return None
        if len(keep) < len(batch.prompts) and _can_prune(batch.cache):
            _select_rows(batch, torch.tensor(keep, device=device))
            if _can_merge(batch.cache):
                _drop_empty_columns(batch)
        # Rows that could not be dropped keep stepping on their own greedy tokens; their output is
        # ignored, and rows never attend to one another, so the open rows are unaffected.
        return batch

    while waiting or running is not None:
        free = batch_size - (len(running.prompts) if running else 0)
        # waiting first: once the queue is empty, no step pays for the cache check
        if waiting and (running is None or (refill and free >= min(refill_at, len(waiting))
                                            and _can_merge(running.cache))):
            joining = [waiting.pop() for _ in range(min(free, len(waiting)))]
            fresh = settle(_prefill(model, tokenizer, texts, joining, device))
            if fresh is not None:  # None: every joining prompt ended at its first token
                running = fresh if running is None else _merge(running, fresh)
        else:
            assert running is not None  # the branch above takes every turn without a running batch
            _step(model, running)
            running = settle(running)
        if stop is not None and (waiting or running is not None) and stop():
            return Generation(tokenizer.batch_decode(answers, skip_special_tokens=True), answers, complete=False)
    return Generation(tokenizer.batch_decode(answers, skip_special_tokens=True), answers)


def _prefill(model, tokenizer, texts: Sequence[str], prompts: list[int], device) -> _Batch:
    """A new batch of ``prompts`` after one forward call over their texts."""
    encoded = tokenizer([texts[p] for p in prompts], return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(device)
    mask = encoded["attention_mask"]
    # Left padding: each row counts its positions from its own first real token, as it would alone.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    output = model(input_ids=encoded["input_ids"], attention_mask=mask, position_ids=positions,
                   use_cache=True, logits_to_keep=1)
    return _Batch(prompts, output.past_key_values, mask, positions[:, -1:], output.logits[:, -1].argmax(-1))


def _step(model, batch: _Batch) -> None:
    """Feeds every row its newest token, which then becomes the one after it."""
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.prompts), 1)], dim=1)
    batch.positions = batch.positions + 1
    output = model(input_ids=batch.tokens.unsqueeze(1), attention_mask=batch.mask, position_ids=batch.positions,
                   past_key_values=batch.cache, use_cache=True, logits_to_keep=1)
    batch.cache, batch.tokens = output.past_key_values, output.logits[:, -1].argmax(-1)


def _can_prune(cache) -> bool:
    # reorder_cache is the beam-search hook; for these layer types it selects every per-row state
    # (keys and values, or convolution and recurrent states), so it can also drop rows. Quantized
    # layers defer their reorder and other cache types are unknown: keep their rows instead.
    return isinstance(cache, Cache) and all(
        isinstance(layer, (DynamicLayer, LinearAttentionLayer, DummyLayer)) and not isinstance(layer, BaseQuantizedLayer)
        for layer in cache.layers
    )


# Layer kinds whose whole per-row state _merge and _drop_empty_columns know. Exact types: a
# subclass may keep more state (quantized residuals, say) that a merge would leave inconsistent.
_MERGEABLE = (DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionLayer, DummyLayer)


def _can_merge(cache) -> bool:
    return isinstance(cache, Cache) and all(
        type(layer) in _MERGEABLE and not getattr(layer, "record_past", False)
        and (not isinstance(layer, DynamicLayer) or (layer.is_initialized and layer.keys.dim() == 4))
        for layer in cache.layers
    )


def _select_rows(batch: _Batch, keep: torch.Tensor) -> None:
    batch.cache.reorder_cache(keep)
    batch.prompts = [batch.prompts[row] for row in keep.tolist()]
    batch.mask, batch.positions, batch.tokens = batch.mask[keep], batch.positions[keep], batch.tokens[keep]


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch of the rows of ``a`` then ``b``, each left-padded to the longer timeline.

    Key/value layers hold one column per timeline column (sliding-window layers the newest
    ``min(columns, window - 1)``), so padding on the left with masked zeros lines the rows up; a
    sliding layer's shared column count becomes the merged one. Linear-attention states have no
    time axis and are stacked as they are.
    """
    columns = max(a.mask.shape[1], b.mask.shape[1])
    for left, right in zip(a.cache.layers, b.cache.layers):
        if isinstance(left, DynamicLayer):
            width = max(left.keys.shape[-2], right.keys.shape[-2])
            left.keys = torch.cat([_pad_left(left.keys, width, -2), _pad_left(right.keys, width, -2)])
            left.values = torch.cat([_pad_left(left.values, width, -2), _pad_left(right.values, width, -2)])
            if isinstance(left, DynamicSlidingWindowLayer):
                left.cumulative_length = columns
        elif isinstance(left, LinearAttentionLayer):
            for state in range(left.number_of_states):
                if left.is_conv_states_initialized[state]:
                    left.conv_states[state] = torch.cat([left.conv_states[state], right.conv_states[state]])
                if left.is_recurrent_states_initialized[state]:
                    left.recurrent_states[state] = torch.cat([left.recurrent_states[state], right.recurrent_states[state]])
    return _Batch(a.prompts + b.prompts, a.cache,
                  torch.cat([_pad_left(a.mask, columns, 1), _pad_left(b.mask, columns, 1)]),
                  torch.cat([a.positions, b.positions]), torch.cat([a.tokens, b.tokens]))


def _drop_empty_columns(batch: _Batch) -> None:
    """Removes the leading columns no row attends to (padding of rows that have left)."""
    empty = int((batch.mask.sum(0) == 0).cumprod(0).sum())
    if not empty:
        return
    batch.mask = batch.mask[:, empty:]
    columns = batch.mask.shape[1]
    for layer in batch.cache.layers:
        if isinstance(layer, DynamicLayer):
            # a full layer holds every column; a sliding one the newest few, of which it keeps as
            # many as remain
            keep = min(columns, layer.keys.shape[-2])
            layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]
            if isinstance(layer, DynamicSlidingWindowLayer):
                layer.cumulative_length = columns


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _end_token_ids(model, tokenizer) -> set[int]:
    """Tokens that end an answer: those ``model.generate`` would stop at, plus the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = set(configured) if isinstance(configured, (list, tuple)) else {configured}
    ends.add(tokenizer.eos_token_id)
    return {int(token) for token in ends if token is not None}
