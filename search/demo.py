"""``abliterate demo``: the main job on the embedded default.

Until the search service lands this runs the ablation engine end to end on a tiny model built
offline (load, inspect, capture, directions, bake, check, restore, export, reload) and says
plainly that the Optuna search is not there yet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ablation import Baker, Kernel, Profile, export_checkpoint, find_writers, load_model
from ablation.architectures import decoder_layers
from ablation.directions import mean_difference
from ablation.residuals import capture_last_token
from ablation.tiny import tiny_model
from objectives.prompts import DEMO_HARMFUL, DEMO_HARMLESS, demo_prompts
from search.cli import console as make_console, print_writers


def run_demo(model_type: str = "qwen3") -> int:
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="abliterate-demo-") as scratch:
        base = Path(scratch) / "base"
        model, tokenizer = tiny_model(model_type)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        console.print(f"[bold]1. load[/] a tiny random {model_type} model (the embedded default until the refusing demo model ships)")
        loaded = load_model(str(base), dtype="fp32", device="cpu")
        writers = find_writers(loaded.model)
        print_writers(writers, title="2. residual writers")

        harmful, harmless = demo_prompts(DEMO_HARMFUL), demo_prompts(DEMO_HARMLESS)
        console.print(f"[bold]3. capture[/] last-token residuals of {len(harmful)} harmful and {len(harmless)} harmless prompts")
        residuals = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(p)) for p in (harmful, harmless)]
        directions = mean_difference(*residuals)

        layers = len(decoder_layers(loaded.model))
        profile = Profile({g: Kernel("tent", peak=0.6 * (layers - 1), peak_weight=1.0, floor_weight=0.5, falloff=layers)
                           for g in ("attn", "mlp")})
        baker = Baker(writers)
        before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
        report = baker.bake(directions, profile)
        console.print(f"[bold]4. bake[/] {report.tensors} tensors in layers {list(report.layers)}, "
                      f"{report.saved_bytes / 1024:.0f} KiB kept to undo it")
        edited = capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(harmful))
        along = lambda r: (r * directions).sum(-1).mean(0)  # noqa: E731 - mean projection per layer
        console.print("   mean harmful projection on the direction per layer, before -> after: "
                      + ", ".join(f"{a:.2f}->{b:.2f}" for a, b in zip(along(residuals[0]).tolist(), along(edited).tolist())))

        out = Path(scratch) / "edited"
        export_checkpoint(loaded, out)
        reloaded = load_model(str(out), dtype="fp32", device="cpu")
        probe = loaded.tokenizer(loaded.format_chat(harmful[:2]), return_tensors="pt", padding=True)
        same = torch.allclose(loaded.model(**probe).logits, reloaded.model(**probe).logits, atol=1e-5)
        console.print(f"[bold]5. export[/] {sorted(p.name for p in out.iterdir())}; reloaded logits match: {same}")

        baker.restore()
        exact = all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
        console.print(f"[bold]6. restore[/] bit-exact: {exact}")
    console.print("\n[yellow]not yet:[/] the search service (shared Optuna study, parallel workers, "
                  "KL and refusal objectives, dashboard) is still being built; this demo covered the "
                  "ablation engine it stands on.")
    return 0 if same and exact else 1
