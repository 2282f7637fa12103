"""``abliterate demo``: the main job on the embedded default.

Until the search service lands, this runs by hand what a study will automate. It loads the
shipped refusing model, measures its refusals, takes a refusal direction from its residuals and
tries it from each layer (plus a random direction as a control), scoring refusals and KL drift.
Then it exports the best edit and checks that restoring the model is bit-exact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.table import Table

from ablation import Baker, Profile, export_checkpoint, find_writers, load_model
from ablation.directions import mean_difference
from ablation.residuals import capture_last_token
from objectives.kl import KLScorer
from objectives.prompts import read_prompts
from objectives.refusal import MarkerProxy
from objectives.refuser import prompt_path, refuser_path
from search.cli import console as make_console


def run_demo() -> int:
    console = make_console()
    loaded = load_model(str(refuser_path()), dtype="fp32", device="cpu")
    writers = find_writers(loaded.model)
    layers = max(w.layer for w in writers) + 1
    console.print(f"[bold]model[/] the shipped refusing model ({type(loaded.model).__name__}, {layers} layers, "
                  f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M parameters, {len(writers)} residual writers)")
    prompts = {(k, p): read_prompts(prompt_path(k, p)) for k in ("harmful", "harmless") for p in ("extraction", "evaluation")}
    proxy = MarkerProxy(max_new_tokens=48)
    harmful, harmless = prompts["harmful", "evaluation"], prompts["harmless", "evaluation"]
    base = proxy.score(loaded, harmful)
    console.print(f"[bold]baseline[/] refuses {base.rate('refusal'):.0%} of {len(harmful)} held-out harmful prompts, "
                  f"{proxy.score(loaded, harmless).rate('refusal'):.0%} of {len(harmless)} harmless ones")

    residuals = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(prompts[k, "extraction"]))
                 for k in ("harmful", "harmless")]
    directions = mean_difference(*residuals)
    kl = KLScorer(loaded.model, loaded.tokenizer, loaded.format_chat(harmless))
    candidates = {f"layer {layer} direction": directions[layer] for layer in range(layers)}
    candidates["random direction (control)"] = torch.randn(directions.shape[1], generator=torch.Generator().manual_seed(0))

    table = Table(title="one direction baked into every layer at weight 1")
    for column in ("edit", "refusal", "degenerate", "KL"):
        table.add_column(column)
    baker = Baker(writers)
    results = {}
    for label, direction in candidates.items():
        with baker.baked_into(direction, Profile.uniform(1.0)):
            score, drift = proxy.score(loaded, harmful), kl.score()
        results[label] = (score.value, drift)
        table.add_row(label, f"{score.rate('refusal'):.0%}", f"{score.rate('degenerate'):.0%}", f"{drift:.3f}")
    console.print(table)

    best = min((label for label in results if "random" not in label), key=lambda label: results[label])
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    with tempfile.TemporaryDirectory(prefix="abliterate-demo-") as scratch, baker.baked_into(candidates[best], Profile.uniform(1.0)):
        out = export_checkpoint(loaded, Path(scratch) / "edited")
        reloaded = load_model(str(out), dtype="fp32", device="cpu")
        after = proxy.score(reloaded, harmful)
        console.print(f"[bold]export[/] {best}: wrote {', '.join(sorted(p.name for p in out.iterdir()))}; "
                      f"the reloaded checkpoint refuses {after.rate('refusal'):.0%}")
        for prompt, response in after.samples[:2]:
            console.print(f"  > {prompt}\n    {response.strip()[:160]}", markup=False, highlight=False)
    exact = all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())
    console.print(f"[bold]restore[/] bit-exact: {exact}")
    console.print("\n[yellow]not yet:[/] the search service (a shared Optuna study over layer ranges, weight "
                  "profiles and direction methods, parallel workers, the dashboard) is still being built; "
                  "this demo ran by hand what a study will automate.")
    return 0 if exact else 1
