"""The trial loop at several batch sizes on the benchmark model (bench/gpu.py).

Directions are computed once; at each batch size the real :class:`~search.trial.TrialRunner` is
built (base log-probs) and runs the same candidates: the classic full-depth edit, then random
points of the ablate space (the default before heads joined it, so figures stay comparable). The KL cap is out of reach and no trial is pruned, so that every
trial runs its whole refusal pass. Seconds are split by timing the runner's own bake, KL, refusal and restore calls, waiting
for the device before and after each, so work queued on a GPU is counted where it was asked for.
"""

from __future__ import annotations

import gc
import math
import statistics
import time


def trial_loop(bench, deadline: float) -> dict:
    """Directions once, then at each batch size the base log-probs and N timed trials."""
    import torch

    from abliterate.objectives.refusal import MarkerProxy
    from abliterate.search.space import PRESETS
    from abliterate.search.trial import TrialRunner, compute_directions

    plan, loaded = bench.plan, bench.loaded
    harmful, harmless = bench.prompts["harmful"], bench.prompts["harmless"]
    evaluation = slice(plan.extraction, plan.extraction + plan.evaluation)
    out: dict = {"new_tokens": plan.new_tokens, "batch_sizes": {}}
    start = time.perf_counter()
    directions = compute_directions(loaded, harmful[:plan.extraction], harmless[:plan.extraction], PRESETS["ablate"].methods,
                                    bench.chat, plan.batch_sizes[0])
    bench.sync()
    out["directions_s"] = round(time.perf_counter() - start, 2)
    candidates = sample_candidates(plan.trials, next(iter(directions.values())).shape[0])
    kl_texts = bench.chat.apply(loaded, harmless[evaluation])
    kl_tokens = sum(len(loaded.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in kl_texts)
    cuda = bench.device.startswith("cuda")
    weights = torch.cuda.memory_allocated() if cuda else 0
    for size in plan.batch_sizes:
        if time.time() >= deadline:
            out["batch_sizes"][size] = {"cut": "the part's deadline came first"}
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        runner = TrialRunner(loaded, directions, harmful[evaluation], harmless[evaluation],
                             MarkerProxy(max_new_tokens=plan.new_tokens, batch_size=size, chat=bench.chat),
                             kl_cap=math.inf, chat=bench.chat, batch_size=size)
        bench.sync()
        row = {"base_logprobs_s": round(time.perf_counter() - start, 2)}
        watch = Stopwatch(bench.sync)
        watch.wrap(runner.baker, "bake", "bake")
        watch.wrap(runner.baker, "restore", "restore")
        watch.wrap(runner.kl, "score", "kl")
        watch.wrap(runner.proxy, "score_edited", "refusal")  # the answers, generated while the edit is baked
        trials = []
        for candidate in candidates:
            longest = max((t["total"] for t in trials), default=0.0)
            if time.time() + longest >= deadline:  # a trial that would end past the deadline is not started
                row["cut"] = f"after {len(trials)} of {len(candidates)} trials: the part's deadline"
                break
            watch.seconds.clear()
            start = time.perf_counter()
            outcome = runner.run(candidate)
            bench.sync()
            trials.append({**{k: round(v, 6) for k, v in watch.seconds.items()}, "total": round(time.perf_counter() - start, 6),
                           "tokens": outcome.refusal.generated_tokens, "kl_divergence": round(outcome.kl, 5),
                           "edited_layers": len(outcome.edited_layers)})
        row.update(_summary(trials, size, cuda, weights))
        if trials:
            row["kl_prompt_tokens_per_s"] = round(kl_tokens / row["per_trial_s"]["kl"], 1)
        out["batch_sizes"][size] = row
        del runner, watch
        gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # the workers and Heretic run beside this process next
    measured = {s: r for s, r in out["batch_sizes"].items() if "per_trial_s" in r}
    out["fastest_batch_size"] = min(measured, key=lambda s: measured[s]["per_trial_s"]["total"], default=None)
    if cuda and measured:  # what the largest measured batch needs per row, scaled to the device's memory
        per_row = measured[max(measured)]["above_weights_per_row_mib"] * 2**20
        total = torch.cuda.get_device_properties(bench.device).total_memory
        out["rows_fitting_90pct_of_memory"] = int((0.9 * total - weights) // per_row) if per_row > 0 else None
    return out


def sample_candidates(count: int, num_layers: int) -> list:
    """The classic full-depth edit, then random points of the ablate space (fixed seed)."""
    import optuna

    from abliterate.search.space import PRESETS, candidate_from_params, classic_seed, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = PRESETS["ablate"]
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    params = [classic_seed(space)] + [suggest(study.ask(), space) for _ in range(count - 1)]
    return [candidate_from_params(p, num_layers) for p in params]


class Stopwatch:
    """Adds up the seconds of named method calls, waiting for the device before and after each,
    so that work queued on a GPU is counted where it was asked for."""

    def __init__(self, sync):
        self.sync, self.seconds = sync, {}

    def wrap(self, owner, method: str, name: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        setattr(owner, method, timed)  # an instance attribute: only this object's calls are timed


def _summary(trials: list[dict], size: int, cuda: bool, weights: int) -> dict:
    """Medians per trial, throughput and memory of one batch size."""
    import torch

    if not trials:
        return {"trials": []}
    keys = ("bake", "kl", "refusal", "restore", "total")
    out = {"trials": trials, "per_trial_s": {k: round(statistics.median(t.get(k, 0.0) for t in trials), 6) for k in keys}}
    out["refusal_tokens_per_s"] = round(sum(t["tokens"] for t in trials) / sum(t["refusal"] for t in trials), 1)
    out["trials_per_hour"] = round(3600 / out["per_trial_s"]["total"], 1)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out |= {"peak_memory_gib": _gib(peak), "weights_gib": _gib(weights),
                "above_weights_per_row_mib": round((peak - weights) / size / 2**20, 1)}
    return out


def _gib(size: int) -> float:
    return round(size / 2**30, 2)
