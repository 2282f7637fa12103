"""Bake + restore cost per trial, and the memory kept to undo a bake.

    python bench/bake_restore.py --model PATH_OR_GGUF [--dtype bf16] [--device cuda] [--trials 10]
    python bench/bake_restore.py --model tiny:qwen3_moe

Prints, side by side in one run: bake and restore time (median over trials) for a full-stack
edit and a typical tent profile, the bytes the baker keeps against the bytes a full state-dict
backup would keep, and one forward pass of 8 prompts for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from abliterate.ablation import Baker, Kernel, Profile, find_writers, load_model
from abliterate.ablation.architectures import decoder_layers
from abliterate.ablation.bake import Edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder, .gguf file or tiny:MODEL_TYPE")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--keep-on", default="same", choices=["same", "cpu"])
    args = parser.parse_args()

    model, tokenizer = _load(args)
    device = next(model.parameters()).device
    writers = find_writers(model)
    layers = len(decoder_layers(model))
    hidden = model.config.get_text_config().hidden_size
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model {args.model}: {type(model).__name__}, {layers} layers, hidden {hidden}, "
          f"{model_bytes / 2**20:.0f} MiB {next(model.parameters()).dtype} on {device}; {len(writers)} writers")

    directions = torch.nn.functional.normalize(torch.randn(layers, hidden), dim=-1)
    profiles = {
        "full stack, weight 1": Profile.uniform(1.0),
        "tent at 60% depth": Profile({g: Kernel("tent", 0.6 * (layers - 1), 1.0, 0.2, layers / 4) for g in ("attn", "mlp")}),
    }
    baker = Baker(writers, keep_on=args.keep_on)
    for label, profile in profiles.items():
        bake, restore, saved = [], [], 0
        for _ in range(args.trials + 1):  # the first round warms up kernels and allocator
            start = _now(device)
            report = baker.bake(Edit(directions, profile))
            middle = _now(device)
            baker.restore()
            end = _now(device)
            bake.append(middle - start)
            restore.append(end - middle)
            saved = report.saved_bytes
        print(f"{label:>22}: bake {_ms(bake[1:])}, restore {_ms(restore[1:])}, "
              f"{report.tensors} tensors in {len(report.layers)} layers; undo copy {saved / 2**20:.1f} MiB "
              f"({100 * saved / model_bytes:.1f}% of the model; a full state-dict backup is 100%)")

    texts = [f"Question {i}: explain how a bicycle gear works in a few sentences." for i in range(8)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        model(**encoded)
        start = _now(device)
        model(**encoded)
        forward = _now(device) - start
    print(f"{'for scale':>22}: one forward pass of 8 prompts x {encoded['input_ids'].shape[1]} tokens {forward * 1000:.1f} ms")


def _load(args):
    if args.model.startswith("tiny:"):
        from fixtures.tiny import tiny_model

        return tiny_model(args.model.removeprefix("tiny:"))
    loaded = load_model(args.model, args.dtype, args.device)
    return loaded.model, loaded.tokenizer


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f})"


if __name__ == "__main__":
    main()
