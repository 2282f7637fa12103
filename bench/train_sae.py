"""Sparse autoencoders of the front bench's model, trained here for the ``sae`` family's front run.

No SAE of Qwen2.5-Coder-0.5B-Instruct can be downloaded on this machine, and ``--methods sae``
needs one per layer (the user brings them; see ablation/sae.py). This trains one per decoder
layer, in the common layout, on the residuals of every token of chat-formatted prompts that no
front run extracts from or scores: AdvBench past the extraction slice (without JailbreakBench's
prompts), rho-benign past the slices the bench uses, aplomb-benign, rho-edgy past the held-out
slice. A few hundred prompts and a few hundred steps make a small SAE, not a published one: the
figures it gives measure the method with this SAE, and the report printed at the end (fraction of
variance unexplained, mean active features) says how good it is.

    OMP_NUM_THREADS=2 python bench/train_sae.py --out bench/out/sae
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = Path(__file__).resolve().parent / ".models" / "qwen2.5-coder-0.5b-instruct-bf16"


def corpus() -> list[str]:
    """Prompts disjoint from every set bench/searches.py extracts from or bench/front_vs_heretic.py scores."""
    from abliterate.objectives.prompts import load_prompts, normalise

    scored = {normalise(p) for p in load_prompts("jailbreakbench")}
    harmful = [p for p in load_prompts("advbench[64:]") if normalise(p) not in scored]
    return harmful + load_prompts("rho-benign[128:]") + load_prompts("aplomb-benign") + load_prompts("rho-edgy[40:]")


def token_residuals(loaded, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[T, L, H] float16: the output of every decoder layer at every real (unpadded) token."""
    from abliterate.ablation.architectures import decoder_layers

    layers = decoder_layers(loaded.model)
    captured: list[torch.Tensor | None] = [None] * len(layers)

    def hook(index):
        def store(_module, _inputs, output):
            captured[index] = (output[0] if isinstance(output, tuple) else output).float()
        return store

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    rows = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = loaded.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                loaded.model(**batch)
            keep = batch["attention_mask"].bool()
            rows.append(torch.stack([h[keep] for h in captured], dim=1).half())
            print(f"residuals: {min(start + batch_size, len(texts))}/{len(texts)} prompts", end="\r", flush=True)
    finally:
        for handle in handles:
            handle.remove()
    print()
    return torch.cat(rows)


def train_one(x: torch.Tensor, features: int, steps: int, batch: int, l1: float, seed: int) -> tuple[dict, float, float]:
    """An SAE of ``x`` [N, H] (unit-norm decoder rows, L1 on the codes); its tensors, the fraction
    of variance it leaves unexplained and its mean number of active features, on all of ``x``."""
    generator = torch.Generator().manual_seed(seed)
    hidden = x.shape[1]
    scale = x.norm(dim=1).mean() / hidden ** 0.5  # codes and L1 independent of the layer's residual norm
    x = x / scale
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(features, hidden, generator=generator), dim=1))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(features)), torch.nn.Parameter(x.mean(0).clone())
    optimiser = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=3e-3)
    for _ in range(steps):
        sample = x[torch.randint(len(x), (batch,), generator=generator)]
        codes = torch.relu((sample - b_dec) @ W_enc + b_enc)
        loss = (codes @ W_dec + b_dec - sample).pow(2).sum(-1).mean() + l1 * codes.abs().sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            W_dec.data = torch.nn.functional.normalize(W_dec.data, dim=1)
    with torch.no_grad():
        codes = torch.relu((x - b_dec) @ W_enc + b_enc)
        unexplained = ((codes @ W_dec + b_dec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        active = (codes > 0).float().sum(-1).mean().item()
    # Stored in the residual's own units: x / scale went in, so the encoder reads x and scales back.
    tensors = {"W_enc": (W_enc / scale).detach().contiguous(), "b_enc": b_enc.detach().contiguous(),
               "W_dec": (W_dec * scale).detach().contiguous(), "b_dec": (b_dec * scale).detach().contiguous()}
    return tensors, unexplained, active


def main() -> int:
    from safetensors.torch import save_file

    from abliterate.ablation import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for layer_N.safetensors")
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--l1", type=float, default=3.0)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only (a quick check)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model, dtype="float32", device="cpu")
    prompts = corpus()[: args.limit]
    started = time.time()
    residuals = token_residuals(loaded, loaded.format_chat(prompts))
    print(f"{len(prompts)} prompts, {len(residuals)} tokens, {residuals.shape[1]} layers, {time.time() - started:.0f} s")
    for layer in range(residuals.shape[1]):
        tensors, unexplained, active = train_one(residuals[:, layer].float(), args.features, args.steps, args.batch, args.l1, layer)
        save_file(tensors, str(out / f"layer_{layer}.safetensors"))
        print(f"layer {layer:2d}: variance unexplained {unexplained:.3f}, active features {active:.0f} of {args.features}", flush=True)
    print(f"wrote {residuals.shape[1]} SAEs to {out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
