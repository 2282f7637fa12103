"""How close an adapter export comes to the baked checkpoint on the development model, by rank.

    python bench/adapter_fit.py        (prints and writes bench/adapter/fit.json)
    python bench/adapter_fit.py table  (the record as RESULTS' table)

The edit is the default space's first designed trial that ablates whole matrices (norm-preserving,
as the study starts) and the
same edit without norm preservation, on Qwen2.5-Coder-0.5B-Instruct in fp32 with directions from
32 advbench and 32 benign prompts. For each adapter rank: the largest share of a matrix's change
the adapter leaves out, its file size, and the KL divergence of the next-token distribution of the
base model with the adapter loaded by PEFT from the baked model's, on 64 other benign prompts,
beside the KL of the edit itself (base against baked) for scale.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from searches import ensure_model  # noqa: E402

MODEL = ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct-bf16"
RECORD = ROOT / "bench" / "adapter" / "fit.json"
RANKS = (1, 4, 16, 64, 256)


def next_token_log_probs(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tokenizer.padding_side = "left"
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenizer(texts[start:start + 16], return_tensors="pt", padding=True)
            rows.append(torch.log_softmax(model(**batch).logits[:, -1].float(), dim=-1))
    return torch.cat(rows)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """Mean KL(p || q) over prompts."""
    return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())


def main() -> None:
    from dataclasses import replace

    from peft import PeftModel

    from abliterate.ablation import Baker, load_model
    from abliterate.ablation.adapter import edit_factors, save_adapter
    from abliterate.ablation.candidate import candidate_from_params
    from abliterate.ablation.directions import mean_difference, separation
    from abliterate.ablation.residuals import capture_last_token
    from abliterate.ablation.resolve import resolve
    from abliterate.objectives.prompts import load_prompts
    from abliterate.search.space import PRESETS, starting_points

    torch.set_num_threads(1)
    ensure_model(MODEL)
    loaded = load_model(str(MODEL), "float32", "cpu")
    harmful, harmless = load_prompts("advbench")[:32], load_prompts("benign")[:32]
    held_out = loaded.format_chat(load_prompts("benign")[100:164])
    residuals = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(p), 16) for p in (harmful, harmless)]
    directions = {"mean-projected": mean_difference(*residuals, orthogonalize=True)}
    layers = directions["mean-projected"].shape[0]
    peak = int(separation(*residuals)[: int(0.8 * layers)].argmax()) / (layers - 1)
    # The first designed trial that removes the direction from whole matrices (the others edit heads).
    params = next(p for p in starting_points(PRESETS["default"], peak, 6) if p["intervention"] == "ablate")
    baker = Baker.for_model(loaded.model)
    base = next_token_log_probs(loaded.model, loaded.tokenizer, held_out)
    rows = []
    for norm_preserving in (True, False):
        candidate = replace(candidate_from_params(params, layers), norm_preserving=norm_preserving)
        edit = resolve(candidate, directions, baker.writers)
        with baker.baked_into(edit):
            baked = next_token_log_probs(loaded.model, loaded.tokenizer, held_out)
        for rank in RANKS if norm_preserving else RANKS[:1]:
            start, cpu = time.perf_counter(), time.process_time()
            factors = edit_factors(baker, edit, rank)
            with tempfile.TemporaryDirectory() as folder:
                saved = save_adapter(loaded.model, factors, Path(folder))
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
                size = (Path(folder) / "adapter_model.safetensors").stat().st_size
                adapted = PeftModel.from_pretrained(load_model(str(MODEL), "float32", "cpu").model, folder)
                with_adapter = next_token_log_probs(adapted, loaded.tokenizer, held_out)
            rows.append({"norm_preserving": norm_preserving, "max_rank": rank, "rank": saved["rank"], "max_error": saved["max_error"],
                         "adapter_mib": size / 2**20, "kl_adapter_vs_baked": kl(baked, with_adapter), "kl_edit": kl(base, baked),
                         "seconds": seconds, "cpu_seconds": cpu_seconds})
            row = rows[-1]
            print(f"norm-preserving {norm_preserving!s:5}  rank {row['rank']:3d}  left out {row['max_error']:7.2%}  "
                  f"{row['adapter_mib']:7.1f} MiB  KL(baked || adapter) {row['kl_adapter_vs_baked']:.2e}  "
                  f"KL(base || baked) {row['kl_edit']:.2e}  {row['seconds']:.0f} s", flush=True)
    weights = sum(p.numel() for p in loaded.model.parameters()) * 2 / 2**20
    record = {"date": time.strftime("%Y-%m-%d"), "command": "python bench/adapter_fit.py", "model": MODEL.name, "dtype": "float32",
              "threads": 1, "params": params, "peak": peak, "held_out_prompts": len(held_out), "checkpoint_mib_bf16": weights,
              "rows": rows}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1))
    print(f"the whole checkpoint in bf16: {weights:.0f} MiB; wrote {RECORD.relative_to(ROOT)}")


def table() -> None:
    record = json.loads(RECORD.read_text())
    print(f"{record['date']}, {record['model']} in {record['dtype']}, {record['threads']} thread, {record['held_out_prompts']} held-out "
          f"benign prompts; the whole checkpoint in bf16: {record['checkpoint_mib_bf16']:.0f} MiB.\n")
    print("| norm-preserving | rank | share of a matrix's change left out (largest) | adapter (MiB, fp32) "
          "| KL(baked ‖ adapter) | KL(base ‖ baked), the edit | seconds to factor and save |")
    print("|---|---|---|---|---|---|---|")
    for row in record["rows"]:
        print(f"| {'yes' if row['norm_preserving'] else 'no'} | {row['rank']} | {row['max_error']:.2%} | {row['adapter_mib']:.1f} "
              f"| {row['kl_adapter_vs_baked']:.2e} | {row['kl_edit']:.2e} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    table() if sys.argv[1:] == ["table"] else main()
