"""Heretic 1.4.0's own trial loop, timed on the benchmark's model and prompts (bench/gpu.py).

:func:`run_heretic` runs this file as a script in the bundle's Heretic venv, where :func:`main`
wraps Heretic's methods with timers and starts its command line. Heretic (AGPL-3.0) is only
installed and run; none of its code is in this project.

Settings match ours: the same saved model, 64 + 64 prompts for directions, 100 + 100 for scoring,
64 new tokens, one fixed batch size (its automatic search would spend the budget), thinking
closed by the same empty block (``response_prefix``). Its chat turns carry an empty system
prompt, a few tokens ours do not. A trial of Heretic resets its LoRA adapters, writes the edit
into them, then scores KL and refusals; there is no KL cap, so every trial runs both passes.

Heretic imports bitsandbytes and lm-eval at start-up but uses them only for 4-bit models and its
closing benchmark menu, neither of which runs here. When they are not installed (their wheels do
not fit in what a GPU call receives), empty stand-in modules take their place while Heretic is
imported, and the result says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve()


def run_heretic(bench, deadline: float) -> dict:
    """Heretic's trials until ``deadline``; its per-trial seconds, or why there are none."""
    python = os.environ.get("ABLITERATE_GPU_HERETIC_PYTHON")
    plan = bench.plan
    model = bench.saved_model()
    work = bench.workdir / "heretic"
    work.mkdir(exist_ok=True)
    slices = {"good": ("harmless", 0, plan.extraction), "bad": ("harmful", 0, plan.extraction),
              "good_evaluation": ("harmless", plan.extraction, plan.extraction + plan.evaluation),
              "bad_evaluation": ("harmful", plan.extraction, plan.extraction + plan.evaluation)}
    for name, (side, start, stop) in slices.items():
        (work / f"{name}.txt").write_text("\n".join(bench.prompts[side][start:stop]) + "\n", encoding="utf-8")
    gpu = bench.device.startswith("cuda")
    batch_size = plan.batch_sizes[len(plan.batch_sizes) // 2]
    settings = [f'model = "{model}"', f'dtypes = ["{"bfloat16" if gpu else "float32"}"]',
                f'device_map = "{"auto" if gpu else "cpu"}"', f"batch_size = {batch_size}",
                f"max_response_length = {plan.new_tokens}", 'response_prefix = "<think>\\n\\n</think>\\n\\n"',
                'system_prompt = ""', "seed = 0", "n_trials = 200", f'study_checkpoint_dir = "{work / "checkpoints"}"']
    settings += [f'[{name}_prompts]\ndataset = "{work / f"{name}.txt"}"' for name in slices]
    (work / "config.toml").write_text("\n".join(settings) + "\n")
    result = work / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "KAGGLE_KERNEL_RUN_TYPE": "1", "PYTHONUNBUFFERED": "1"}
    with open(work / "heretic.log", "w") as log:
        process = subprocess.Popen([python, str(HERE), "--model", str(model), "--result", str(result), "--trials",
                                    str(plan.trials), "--until", str(deadline)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None and time.time() < deadline + 5:  # it stops itself at the deadline
            time.sleep(0.5)
        if process.poll() is None:
            process.kill()
        process.wait()
    out = json.loads(result.read_text()) if result.exists() else {}
    out |= {"batch_size": batch_size, "exit_code": process.returncode}
    if not out.get("trials"):
        out["log_tail"] = (work / "heretic.log").read_text(errors="replace")[-1500:]
    return out


class Recorder:
    """Groups the timed calls into set-up and trials, and writes them out after each trial.

    A trial is Heretic's reset, bake (``abliterate``), then scoring (``get_score``: the KL pass and
    the refusal pass); calls before the first bake are set-up. Once ``trials`` are done, or the
    next would end past ``until``, the process ends: Heretic would go on to its menus.
    """

    def __init__(self, path: Path, trials: int, until: float, stand_ins: list[str]):
        self.path, self.wanted, self.until = path, trials, until
        self.out = {"setup_s": {}, "trials": [], "stand_ins": stand_ins}
        self.current: dict | None = None
        self.reset = (0.0, 0.0)  # start and seconds of the latest reset
        self.setup_end = None

    def called(self, name: str, start: float, seconds: float) -> None:
        if name == "reset":
            self.reset = (start, seconds)
        elif name == "bake":
            if not self.out["trials"] and self.setup_end is not None:
                self.out["setup_s"]["directions_and_study"] = round(self.reset[0] - self.setup_end, 2)
            self.current = {"restore": round(self.reset[1], 3), "bake": round(seconds, 3)}
        elif self.current is None:
            self.out["setup_s"][name] = round(seconds, 2)
            self.setup_end = start + seconds
        elif name in ("kl", "refusal"):
            self.current[name] = round(seconds, 3)
        elif name == "score":
            self.current["total"] = round(start + seconds - self.reset[0], 3)
            self.out["trials"].append(self.current)
            self.current = None
            self._save()
            longest = max(t["total"] for t in self.out["trials"])
            if len(self.out["trials"]) >= self.wanted or time.time() + longest >= self.until:
                os._exit(0)

    def _save(self) -> None:
        trials = self.out["trials"]
        self.out["per_trial_s"] = {k: round(statistics.median(t.get(k, 0.0) for t in trials), 3)
                                   for k in ("restore", "bake", "kl", "refusal", "total")}
        self.path.write_text(json.dumps(self.out, indent=1))


@contextmanager
def stand_ins():
    """Empty modules for bitsandbytes and lm-eval, where they are not installed, while Heretic is
    imported; yields their names. They leave ``sys.modules`` afterwards, so that libraries that
    later ask whether bitsandbytes is installed (PEFT, transformers) are told it is not."""
    import importlib.util

    placed = [name for name in ("bitsandbytes", "lm_eval") if importlib.util.find_spec(name) is None]
    modules = [name for name in ("bitsandbytes", "lm_eval", "lm_eval.models", "lm_eval.models.huggingface")
               if name.split(".")[0] in placed]
    for name in modules:
        sys.modules[name] = types.ModuleType(name)
    if "lm_eval" in placed:
        sys.modules["lm_eval.models.huggingface"].HFLM = None  # only its benchmark menu builds one
    try:
        yield placed
    finally:
        for name in modules:
            del sys.modules[name]


def _timed(owner, method: str, name: str, recorder: Recorder, sync) -> None:
    original = getattr(owner, method)

    def wrapper(*args, **kwargs):
        sync()
        start = time.perf_counter()
        result = original(*args, **kwargs)
        sync()
        recorder.called(name, start, time.perf_counter() - start)
        return result

    setattr(owner, method, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description="run Heretic's trial loop with timers (inside its venv)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--until", type=float, required=True, help="wall-clock time to start no trial after")
    args = parser.parse_args()
    import torch

    with stand_ins() as placed:
        from heretic import main as heretic_main
        from heretic.evaluator import Evaluator
        from heretic.model import Model
    recorder = Recorder(args.result, args.trials, args.until, placed)

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for owner, method, name in ((Model, "__init__", "load_model"), (Evaluator, "__init__", "base_scoring"),
                                (Model, "reset_model", "reset"), (Model, "abliterate", "bake"),
                                (Model, "get_logprobs_batched", "kl"), (Evaluator, "count_refusals", "refusal"),
                                (Evaluator, "get_score", "score")):
        _timed(owner, method, name, recorder, sync)
    sys.argv = ["heretic", "--model", args.model]  # without --model Heretic takes the last argument for it
    heretic_main.main()


if __name__ == "__main__":
    main()
