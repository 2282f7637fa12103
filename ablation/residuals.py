"""Capture the residual stream at the last prompt token, for every decoder layer.

The last prompt token is the position that emits the first response token, which is where a
refusal is decided. Prompts are right-padded, so the last real token attends only to real
tokens and its residual is exactly what an unpadded forward pass gives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils.logging import tqdm

from abliterate.ablation.architectures import decoder_layers
from abliterate.ablation.errors import AblationError, write_failure


@torch.no_grad()
def capture_last_token(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    progress: bool | str = False,
) -> torch.Tensor:
    """Residuals after each decoder layer at each text's last token: float32 [N, L, H] on CPU.

    ``texts`` are already formatted (chat template applied); no special tokens are added.
    """
    if not texts:
        raise AblationError("no prompts to capture residuals from")
    layers = decoder_layers(model)
    captured: list[torch.Tensor | None] = [None] * len(layers)
    rows: torch.Tensor | None = None

    def hook(index):
        def store(_module, _inputs, output):
            assert rows is not None  # set before each forward call
            hidden = output[0] if isinstance(output, tuple) else output
            captured[index] = hidden[torch.arange(hidden.shape[0], device=hidden.device), rows.to(hidden.device)].float().cpu()
        return store

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    batches = []
    try:
        starts = range(0, len(texts), batch_size)
        label = progress if isinstance(progress, str) else "residuals"
        # transformers' tqdm honours HF_HUB_DISABLE_PROGRESS_BARS (the CLI sets it for logs and for
        # workers sharing a terminal); disable=None hides the bar when stderr is not a terminal.
        for start in tqdm(starts, desc=label, unit="batch", disable=None if progress else True):
            encoded = tokenizer(
                list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                padding_side="right", add_special_tokens=False,
            ).to(device)
            rows = encoded["attention_mask"].sum(dim=1) - 1
            model(**encoded, use_cache=False)
            batches.append(torch.stack(cast(list[torch.Tensor], captured), dim=1))  # every layer's hook has run
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(batches)


def save_residuals(
    path,
    harmful: torch.Tensor,
    harmless: torch.Tensor,
    directions: torch.Tensor | None = None,
    metadata: dict[str, str] | None = None,
    samples: bool = False,
) -> None:
    """Write per-layer means (and the directions, and optionally every sample) to safetensors.

    The file appears complete or not at all: it is written beside the target and renamed. A
    target that cannot be written (a read-only or full disk, a folder in its place) is a
    one-line error.
    """
    tensors = {"harmful_mean": harmful.mean(0), "harmless_mean": harmless.mean(0)}
    if directions is not None:
        tensors["directions"] = directions
    if samples:
        tensors.update(harmful=harmful, harmless=harmless)
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata or {})
        os.replace(partial, target)
    except (OSError, SafetensorError) as error:
        raise AblationError(f"cannot write {target} ({write_failure(error)}); choose another --out") from None
    finally:
        partial.unlink(missing_ok=True)


def load_residuals(path) -> dict[str, torch.Tensor]:
    """The tensors written by :func:`save_residuals`."""
    return load_file(str(path))
