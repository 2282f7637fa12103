"""Per-trial scoring cost: the KL pass and the refusal pass, new code against the previous code.

    OMP_NUM_THREADS=2 python bench/score.py --model bench/.models/qwen2.5-coder-0.5b-instruct.gguf \
        --harmful "jailbreakbench[0:100]" --harmless "rho-benign[0:100]" --max-new-tokens 100

A realistic edit is baked first (mean-difference direction of a layer at 75% depth, taken from
separate extraction prompts, at every layer). How much early stopping saves depends on how often
the model still refuses, so the refusal pass is timed on the unedited model too (``--states``).

Prints, side by side in one run and in the same process:

* the KL pass with the output head at the picked positions only, in batches of prompts of similar
  length (``response_logprobs``), and with logits at every position in batches in the given
  order (the previous code, kept here as ``_full_logits_logprobs``);
* the refusal pass with ``generate_greedy`` (continuous batching: finished rows leave, waiting
  prompts join) with and without early stopping, with ``refill=False`` (finished rows leave, but
  the next batch starts only when the whole batch has ended: the previous loop), and through
  ``model.generate`` with a stopping criterion (the code before that, kept here as
  ``_generate_hf``), with wall and CPU seconds, forward calls and rows computed, and whether the
  answers match; with ``--also-batch-sizes``, both passes at other batch sizes too;
* what a trial over the KL cap costs when the refusal pass is skipped.

With ``--repeats N`` every variant runs N times, interleaved round by round, and medians are
shown, so a load that comes and goes on a shared machine hits all variants alike.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from unittest import mock

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from abliterate.ablation import Baker, Profile, load_model
from abliterate.ablation.bake import Edit
from abliterate.ablation.directions import mean_difference
from abliterate.ablation.residuals import capture_last_token
from abliterate.objectives import refusal
from abliterate.objectives.generation import Generation, generate_greedy
from abliterate.objectives.kl import KLScorer, kl_divergence, response_logprobs
from abliterate.objectives.prompts import load_prompts
from abliterate.objectives.refusal import MarkerProxy

REFERENCE = "continuous batching, early stop"


@dataclass
class Run:
    """One timed pass: seconds of wall clock and of this process's CPU, and the forward work it did."""

    wall: float
    cpu: float
    prefills: int  # forward calls over whole prompts
    prefill_rows: int
    steps: int  # decoding forward calls (one new token each)
    step_rows: int  # their batch rows added up
    load: tuple[float, float]  # 1-minute load average before and after
    result: object = None


class RowCounter:
    """Counts a model's forward calls and their batch rows: prompt passes and decoding steps."""

    def __init__(self, model):
        self.prefills = self.prefill_rows = self.steps = self.step_rows = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if ids.shape[1] == 1:
            self.steps += 1
            self.step_rows += ids.shape[0]
        else:
            self.prefills += 1
            self.prefill_rows += ids.shape[0]

    def close(self) -> None:
        self._handle.remove()


def timed(model, work: Callable[[], object]) -> Run:
    counter = RowCounter(model)
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = work()
    finally:
        counter.close()
    return Run(time.perf_counter() - wall, time.process_time() - cpu, counter.prefills, counter.prefill_rows, counter.steps,
               counter.step_rows, (load, os.getloadavg()[0]), result)


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
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every variant, interleaved")
    parser.add_argument("--states", nargs="+", choices=("edited", "unedited"), default=["edited", "unedited"],
                        help="score the baked edit, the unedited model, or both")
    parser.add_argument("--skip-full", action="store_true", help="skip the refusal pass without early stopping")
    parser.add_argument("--skip-no-refill", action="store_true",
                        help="skip the refusal pass that runs batch after batch (no continuous batching)")
    parser.add_argument("--skip-hf", action="store_true", help="skip the previous model.generate refusal pass")
    parser.add_argument("--also-batch-sizes", type=int, nargs="*", default=[],
                        help="also time the KL pass and the refusal pass (continuous batching, early stop) at these batch sizes")
    args = parser.parse_args()

    loaded = load_model(args.model, args.dtype, args.device)
    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    print(f"model {args.model} on {loaded.device}, {len(harmful)} harmful / {len(harmless)} harmless prompts, "
          f"up to {args.max_new_tokens} new tokens, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.repeats} round(s); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    start = time.perf_counter()
    extraction = [capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(load_prompts(spec)), args.batch_size)
                  for spec in (args.extract_harmful, args.extract_harmless)]
    layer = round(0.75 * (extraction[0].shape[1] - 1))
    direction = mean_difference(*extraction)[layer]
    print(f"directions: {time.perf_counter() - start:.1f} s (once per study; layer {layer})")

    harmless_texts = loaded.format_chat(harmless)
    start = time.perf_counter()
    kl = KLScorer(loaded.model, loaded.tokenizer, harmless_texts, batch_size=args.batch_size)
    print(f"base log-probs: {time.perf_counter() - start:.1f} s (once per worker)")

    refusal_variants = [(REFERENCE, generate_greedy, True)]
    refusal_variants += [] if args.skip_full else [("continuous batching, full length", generate_greedy, False)]
    refusal_variants += [] if args.skip_no_refill else [
        ("batch after batch, early stop", functools.partial(generate_greedy, refill=False), True)]
    refusal_variants += [] if args.skip_hf else [("HF generate, early stop (old)", _generate_hf, True)]
    refusal_variants += [(f"continuous batching, early stop, batch {size}", _at_batch_size(size), True)
                         for size in args.also_batch_sizes]
    baker = Baker.for_model(loaded.model)
    for state in args.states:
        with baker.baked_into(Edit(direction, Profile.uniform(1.0))) if state == "edited" else nullcontext():
            print(f"\n== {state} model")
            kl_variants = [
                ("head at picked positions", kl.score),
                ("logits everywhere (old)", lambda: float(kl_divergence(kl.base_logprobs, _full_logits_logprobs(
                    loaded.model, loaded.tokenizer, harmless_texts, args.batch_size)).mean())),
            ]
            kl_variants += [(f"head at picked, batch {size}", lambda size=size: float(kl_divergence(
                kl.base_logprobs, response_logprobs(loaded.model, loaded.tokenizer, harmless_texts, batch_size=size)).mean()))
                for size in args.also_batch_sizes]
            _warm_up(loaded, harmful[: args.batch_size], harmless_texts[: args.batch_size], args.batch_size)
            kl_runs = {label: [] for label, _ in kl_variants}
            runs = {label: [] for label, _, _ in refusal_variants}
            for round_ in range(args.repeats):
                # Odd rounds go in reverse, so no variant always runs first or last.
                order = slice(None, None, -1 if round_ % 2 else 1)
                for label, score in kl_variants[order]:
                    kl_runs[label].append(timed(loaded.model, score))
                for label, generate, early in refusal_variants[order]:
                    runs[label].append(timed(loaded.model, lambda g=generate, e=early: _refusal_pass(loaded, harmful, g, e, args)))
            kl_new = _report_kl(kl_runs)
            _report_refusal(runs)
            early = statistics.median(r.wall for r in runs[REFERENCE])
            print(f"trial over the KL cap: {kl_new:.1f} s instead of {kl_new + early:.1f} s "
                  f"({100 * early / (kl_new + early):.0f}% saved by skipping the refusal pass)")


def _warm_up(loaded, harmful: Sequence[str], harmless_texts: Sequence[str], batch_size: int) -> None:
    # The first forward of a new shape (and the first after a bake) pays one-off set-up costs;
    # pay them for every code path before anything is timed.
    response_logprobs(loaded.model, loaded.tokenizer, harmless_texts, batch_size=batch_size)
    _full_logits_logprobs(loaded.model, loaded.tokenizer, harmless_texts, batch_size)
    texts = loaded.format_chat(harmful)
    generate_greedy(loaded.model, loaded.tokenizer, texts, 2, batch_size)
    _generate_hf(loaded.model, loaded.tokenizer, texts, 2, batch_size)


def _at_batch_size(size: int):
    """generate_greedy with its batch size fixed at ``size``, whatever the caller passes."""

    def generate(model, tokenizer, texts, max_new_tokens, batch_size=16, decided=None):
        return generate_greedy(model, tokenizer, texts, max_new_tokens, size, decided)

    return generate


def _refusal_pass(loaded, prompts: Sequence[str], generate, early: bool, args):
    """MarkerProxy's score with ``generate`` in place of generate_greedy; (score, generation)."""
    generations = []

    def recording(*call_args, **kwargs):
        generations.append(generate(*call_args, **kwargs))
        return generations[-1]

    proxy = MarkerProxy(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, early_stop=early)
    with mock.patch.object(refusal, "generate_greedy", recording):
        score = proxy.score(loaded, prompts)
    return score, generations[0]


def _report_kl(runs: dict[str, list[Run]]) -> float:
    new, old = (runs[label] for label in list(runs)[:2])
    for label, measured in runs.items():
        print(f"KL pass, {label:>26}: {_median(measured, 'wall'):6.1f} s wall, {_median(measured, 'cpu'):6.1f} s CPU, "
              f"KL {measured[0].result:.6f}{_loads(measured)}")
    print(f"KL pass speed-up: {_median(old, 'wall') / _median(new, 'wall'):.2f}x wall, "
          f"{_median(old, 'cpu') / _median(new, 'cpu'):.2f}x CPU; KL differs by {abs(new[0].result - old[0].result):.2e}")
    return _median(new, "wall")


def _report_refusal(runs: dict[str, list[Run]]) -> None:
    for label, measured in runs.items():
        score, generation = measured[0].result
        print(f"refusal pass, {label:>29}: {_median(measured, 'wall'):6.1f} s wall, {_median(measured, 'cpu'):6.1f} s CPU, "
              f"{measured[0].prefills:3d} prefills, {measured[0].steps:4d} decoding steps ({measured[0].step_rows:5d} rows), {sum(generation.new_tokens):5d} tokens, refusal "
              f"{score.rate('refusal'):.2f}, degenerate {score.rate('degenerate'):.2f}{_loads(measured)}")
    labels = list(runs)
    reference = runs[labels[0]]
    for label in labels[1:]:
        other = runs[label]
        print(f"  {label} / {labels[0]}: {_median(other, 'wall') / _median(reference, 'wall'):.2f}x wall, "
              f"{_median(other, 'cpu') / _median(reference, 'cpu'):.2f}x CPU; {_agreement(reference[0].result[1], other[0].result[1])}")


def _agreement(ours: Generation, theirs: Generation) -> str:
    """How the answers compare: identical, or ours a prefix of theirs (ours stopped early)."""
    same = sum(a == b for a, b in zip(ours.token_ids, theirs.token_ids))
    prefix = sum(a != b and b[: len(a)] == a for a, b in zip(ours.token_ids, theirs.token_ids))
    return f"{same}/{len(ours.token_ids)} answers identical, {prefix} stopped earlier as a prefix"


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def _loads(runs: list[Run]) -> str:
    """Each run's wall seconds and the load average around it, to see what the medians hide."""
    return " (runs " + ", ".join(f"{run.wall:.1f} s at load {run.load[0]:.1f}-{run.load[1]:.1f}" for run in runs) + ")"


@torch.no_grad()
def _full_logits_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """The previous KL pass (first response token only): logits at every position, then one picked."""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(texts), batch_size):
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt)
            mask[row, : len(prompt)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        picked = logits[torch.arange(len(prompts), device=device), last].unsqueeze(1)
        results.append(torch.log_softmax(picked.float(), dim=-1).cpu())
    return torch.cat(results)


class _VerdictReached(StoppingCriteria):
    """Stops a row once ``decided(response_so_far)`` is true (the previous early stop)."""

    def __init__(self, tokenizer, prompt_length: int, decided: Callable[[str], bool]):
        self.tokenizer, self.prompt_length, self.decided = tokenizer, prompt_length, decided

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.decided(t) for t in texts], device=input_ids.device)


@torch.no_grad()
def _generate_hf(model, tokenizer, texts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                 decided: Callable[[str], bool] | None = None) -> Generation:
    """The previous generate_greedy: ``model.generate`` steps a batch until its last row ends."""
    device = next(model.parameters()).device
    responses, token_ids = [], []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                            padding_side="left", add_special_tokens=False).to(device)
        prompt_length = encoded["input_ids"].shape[1]
        stopping = StoppingCriteriaList([_VerdictReached(tokenizer, prompt_length, decided)] if decided else [])
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, stopping_criteria=stopping,
                                pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = output[:, prompt_length:]
        finished = (new == tokenizer.pad_token_id) | (new == tokenizer.eos_token_id)
        for row in range(new.shape[0]):
            if finished[row].any():
                end = int(finished[row].nonzero()[0])
                stop = end + 1 if new[row, end] == tokenizer.eos_token_id else end
            else:
                stop = new.shape[1]
            token_ids.append(new[row, :stop].tolist())
        responses += tokenizer.batch_decode(new, skip_special_tokens=True)
    return Generation(responses, token_ids)


if __name__ == "__main__":
    main()
