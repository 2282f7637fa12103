"""Batch sizes from the memory a worker finds (``--batch-size auto``).

A row of a batch holds, at its peak: its KV cache over the prompt and the answer (every layer
counted as full attention, an upper bound for sliding-window and linear-attention layers), the
widest activation of a layer over those tokens (the MLP, or the routed experts a token visits),
and float32 logits at the positions a pass keeps, twice (the log-softmax makes a copy). The batch
is as many rows as fit in a share of the free memory, at most the largest prompt set the worker
scores: a larger batch has nothing to hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

FREE_SHARE = 0.5  # of the free memory, for the batches; the rest for the prefix cache, a judge, fragmentation


@dataclass(frozen=True)
class BatchChoice:
    """The batch size chosen on ``device`` and what it was chosen from."""

    size: int
    device: str
    free_bytes: int
    row_bytes: int
    rows: int

    @property
    def line(self) -> str:
        bound = "every prompt of the largest set" if self.size == self.rows else f"{FREE_SHARE:.0%} of the free memory"
        return (f"batch size {self.size} (auto): {self.free_bytes / 2**30:.1f} GiB free on {self.device}, about "
                f"{self.row_bytes / 2**20:.1f} MiB a row at its peak; bound by {bound}")


def row_bytes(config, tokens: int, kept_positions: int, dtype_bytes: int) -> int:
    """The peak memory of one row over ``tokens`` positions (see the module docstring);
    ``config`` is a model's text config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    cache = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes * tokens
    routed = (getattr(config, "moe_intermediate_size", None) or 0) * (getattr(config, "num_experts_per_tok", None) or 0)
    widest = max(getattr(config, "intermediate_size", None) or 0, routed, 4 * config.hidden_size)
    activations = 3 * tokens * widest * dtype_bytes
    logits = 2 * kept_positions * config.vocab_size * 4
    return cache + activations + logits


def fitting_batch(free_bytes: int, per_row: int, rows: int, share: float = FREE_SHARE) -> int:
    """As many rows as fit in ``share`` of ``free_bytes``: at least 1, at most ``rows``."""
    return max(1, min(rows, int(free_bytes * share) // max(per_row, 1)))


def free_memory(device: torch.device) -> int:
    """Bytes free for this process on ``device``: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_batch(loaded, longest_prompt: int, new_tokens: int, kept_positions: int, rows: int) -> BatchChoice:
    """The batch size for ``loaded`` (a LoadedModel): prompts of up to ``longest_prompt`` tokens,
    answers of ``new_tokens``, teacher-forced passes keeping ``kept_positions`` logits a row,
    ``rows`` prompts in the largest set."""
    parameter = next(loaded.model.parameters())
    config = loaded.model.config.get_text_config()
    per_row = max(row_bytes(config, longest_prompt + new_tokens, 1, parameter.element_size()),
                  row_bytes(config, longest_prompt + kept_positions, kept_positions, parameter.element_size()))
    free = free_memory(parameter.device)
    return BatchChoice(fitting_batch(free, per_row, rows), str(parameter.device), free, per_row, rows)
