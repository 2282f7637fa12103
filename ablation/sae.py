"""Refusal directions from a sparse autoencoder the user brings.

An SAE per layer reads that layer's residual (the output of decoder layer l, what
:func:`ablation.residuals.capture_last_token` captures) in the common safetensors layout:
``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in], with
features ``relu((x - b_dec) @ W_enc + b_enc)``. One file per layer, found anywhere under a folder
by a layer number in its path (``layer_12.safetensors``, ``blocks.12/sae_weights.safetensors``,
``layers.12.safetensors``).

:func:`sae_directions` ranks each layer's features by mean activation on harmful minus harmless
prompts and returns the orthonormal basis of the top ``m`` features' decoder rows, strongest
first, so ``[:, :j]`` is the span of the ``j`` strongest; layers without an SAE get zero rows
(nothing removed there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from abliterate.ablation.cone import orthonormal_basis
from abliterate.ablation.errors import AblationError

_LAYER = re.compile(r"(?:layers?|blocks?)[._-]?(\d+)", re.IGNORECASE)
KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass(frozen=True)
class SAE:
    """One layer's sparse autoencoder (float32, CPU)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor

    def encode(self, residuals: torch.Tensor) -> torch.Tensor:
        """Feature activations [N, d_sae] of residuals [N, d_in]."""
        return torch.relu((residuals.float() - self.b_dec) @ self.W_enc + self.b_enc)


def load_saes(folder: str | Path, hidden: int | None) -> dict[int, SAE]:
    """{layer: SAE} of every safetensors file under ``folder`` whose path names a layer; a
    one-line :class:`AblationError` when there is none, a key is missing or a shape is wrong
    (``hidden``: the model's hidden size; None checks only that the SAE is self-consistent)."""
    from safetensors.torch import load_file

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise AblationError(f"SAE folder {root} does not exist; pass a folder of per-layer safetensors files (--sae)")
    saes: dict[int, SAE] = {}
    for path in sorted(root.rglob("*.safetensors")):
        found = _LAYER.findall(str(path.relative_to(root)))
        if not found:
            continue
        layer = int(found[-1])
        if layer in saes:
            raise AblationError(f"two SAE files under {root} name layer {layer}; keep one per layer")
        tensors = load_file(str(path))
        missing = [key for key in KEYS if key not in tensors]
        if missing:
            raise AblationError(f"SAE file {path} lacks {', '.join(missing)}; the layout is W_enc [d_in, d_sae], b_enc, "
                                "W_dec [d_sae, d_in], b_dec")
        sae = SAE(*(tensors[key].float() for key in KEYS))
        d_sae = sae.W_enc.shape[1] if sae.W_enc.dim() == 2 else -1
        hidden = hidden if hidden is not None else (sae.W_enc.shape[0] if sae.W_enc.dim() == 2 else -1)
        shapes = {"W_enc": (hidden, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, hidden), "b_dec": (hidden,)}
        wrong = [f"{k} {tuple(getattr(sae, k).shape)}" for k, shape in shapes.items() if tuple(getattr(sae, k).shape) != shape]
        if wrong:
            raise AblationError(f"SAE file {path} does not fit a model of hidden size {hidden} ({', '.join(wrong)}); "
                                "use the SAEs trained on this model's residual stream")
        saes[layer] = sae
    if not saes:
        raise AblationError(f"no SAE files under {root}: name them by layer, e.g. layer_12.safetensors")
    return saes


def sae_directions(saes: dict[int, SAE], harmful: torch.Tensor, harmless: torch.Tensor, m: int) -> torch.Tensor:
    """[L, m, H] per layer, the orthonormal basis of the decoder rows of the ``m`` features whose
    mean activation rises most from harmless to harmful residuals ([N, L, H] and [M, L, H]),
    strongest first; zero rows for layers without an SAE."""
    layers, hidden = harmful.shape[1], harmful.shape[2]
    beyond = [layer for layer in saes if not 0 <= layer < layers]
    if beyond:
        raise AblationError(f"SAE files name layer(s) {beyond}, but the model has layers 0..{layers - 1}")
    bases = torch.zeros(layers, m, hidden)
    for layer, sae in saes.items():
        rise = sae.encode(harmful[:, layer]).mean(dim=0) - sae.encode(harmless[:, layer]).mean(dim=0)
        top = torch.argsort(rise, descending=True, stable=True)[: min(m, rise.shape[0])]
        bases[layer, : len(top)] = orthonormal_basis(sae.W_dec[top])
    return bases
