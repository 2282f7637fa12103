"""Per-trial scoring cost: the KL pass and the refusal pass, with and without early stopping.

    python bench/score.py --model bench/.models/qwen2.5-coder-0.5b-instruct.gguf \
        --harmful "jailbreakbench[0:100]" --harmless "rho-benign[0:100]" --max-new-tokens 100

A realistic edit is baked first (mean-difference direction of a layer at 75% depth, taken from
separate extraction prompts, at every layer), because how much early stopping saves depends on
how often the model still refuses. Prints, side by side in one run: base log-prob caching, the
KL pass, the refusal pass with early stopping and without, and what a trial over the KL cap
costs when the refusal pass is skipped.
"""

from __future__ import annotations

import argparse
import time

from ablation import Baker, Profile, find_writers, load_model
from ablation.directions import mean_difference
from ablation.residuals import capture_last_token
from objectives.kl import KLScorer
from objectives.prompts import load_prompts
from objectives.refusal import MarkerProxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--harmful", default="jailbreakbench[0:100]")
    parser.add_argument("--harmless", default="rho-benign[0:100]")
    parser.add_argument("--extract-harmful", default="advbench[200:264]")
    parser.add_argument("--extract-harmless", default="aplomb-benign")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-full", action="store_true", help="skip the refusal pass without early stopping")
    args = parser.parse_args()

    loaded = load_model(args.model, args.dtype, args.device)
    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    print(f"model {args.model} on {loaded.device}, {len(harmful)} harmful / {len(harmless)} harmless prompts, "
          f"up to {args.max_new_tokens} new tokens, batch {args.batch_size}")

    start = time.perf_counter()
    extraction = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(load_prompts(spec)), args.batch_size)
                  for spec in (args.extract_harmful, args.extract_harmless)]
    layer = round(0.75 * (extraction[0].shape[1] - 1))
    direction = mean_difference(*extraction)[layer]
    print(f"{'directions':>28}: {time.perf_counter() - start:6.1f} s (once per study; layer {layer})")

    start = time.perf_counter()
    kl = KLScorer(loaded.model, loaded.tokenizer, loaded.format_chat(harmless), batch_size=args.batch_size)
    print(f"{'base log-probs':>28}: {time.perf_counter() - start:6.1f} s (once per worker)")

    baker = Baker(find_writers(loaded.model))
    with baker.baked_into(direction, Profile.uniform(1.0)):
        start = time.perf_counter()
        value = kl.score()
        kl_seconds = time.perf_counter() - start
        print(f"{'KL pass':>28}: {kl_seconds:6.1f} s  (KL {value:.3f})")
        runs = [("refusal pass, early stop", True)] + ([] if args.skip_full else [("refusal pass, full length", False)])
        timings = {}
        for label, early in runs:
            proxy = MarkerProxy(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, early_stop=early)
            start = time.perf_counter()
            score = proxy.score(loaded, harmful)
            timings[early] = time.perf_counter() - start
            print(f"{label:>28}: {timings[early]:6.1f} s  (refusal {score.rate('refusal'):.2f}, degenerate "
                  f"{score.rate('degenerate'):.2f}, {score.generated_tokens} tokens generated)")
    if False in timings:
        print(f"{'early stopping saves':>28}: {max(0.0, 100 * (1 - timings[True] / timings[False])):5.1f}% of the refusal pass")
    trial = kl_seconds + timings[True]
    print(f"{'trial over the KL cap':>28}: {kl_seconds:6.1f} s instead of {trial:.1f} s "
          f"({100 * timings[True] / trial:.0f}% saved by skipping the refusal pass)")


if __name__ == "__main__":
    main()
