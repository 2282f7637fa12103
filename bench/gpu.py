"""The GPU measurement in one command: our trial loop on a 4B hybrid model, two workers on one GPU,
correctness checks, and Heretic 1.4.0 beside it, within a fixed time budget.

    python bench/gpu_bundle.py --out bench/.gpu --tokenizer-from bench/.models/qwen2.5-coder-0.5b-instruct.gguf
    python3 bench/gpu.py --bundle bench/.gpu --out $OUT/gpu.json     # on the GPU machine, carrying bench/.gpu
    python bench/gpu.py --tiny --out /tmp/gpu-tiny.json              # the CPU rehearsal: same code, tiny config

The model is built on the device from ``bench/configs/qwen3_5_4b_text.json`` (Qwen3.5-4B's text
model: 32 layers, hidden 2560, three linear-attention layers to one full-attention layer) with
random bf16 weights: weights cannot travel, and a random model of the real shape costs the same per
token. Its answers never end early, so every refusal pass runs to the token limit: the worst case.

Parts, in order (each one's failure is recorded and the next still runs):

* ``checks``: bake + restore is bit-exact over every parameter; continuous batching (rows leaving
  and joining mid-answer) gives each prompt the token ids it gets alone from ``model.generate``,
  on the model itself and, on a GPU, on a 4-layer float32 model of the same width;
* ``trials``: directions from 64 + 64 prompts, then at each batch size the base log-probs and N
  trials of the real :class:`~search.trial.TrialRunner` (markers proxy, KL cap off so every trial
  runs the refusal pass): seconds per trial split into bake / KL / refusal / restore, peak device
  memory, tokens per second;
* ``workers``: the model saved, then one and then two ``abliterate worker`` processes on the one
  device sharing a SQLite study: trials per hour;
* ``heretic``: Heretic 1.4.0 on the same saved model and prompts, when the bundle has its wheels.

Each part gets a share of ``--budget`` (what earlier parts leave); a part stops starting work at its
deadline and says so. One JSON object is printed at the end and written to ``--out`` (also after
every part, so a run killed from outside still leaves its figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = REPO / "bench" / "configs"
STARTED = "ABLITERATE_GPU_STARTED"  # wall-clock start, kept across the re-exec into the bundle's venv
HERETIC_PYTHON = "ABLITERATE_GPU_HERETIC_PYTHON"
VENVS = "ABLITERATE_GPU_VENVS"  # where the bundle's venvs are, removed at the end


@dataclass(frozen=True)
class Plan:
    """How much one run measures."""

    config: str
    extraction: int  # prompts per side for the directions
    evaluation: int  # harmless prompts for KL, harmful prompts for the refusal pass
    new_tokens: int
    batch_sizes: tuple[int, ...]
    trials: int  # per batch size
    check: tuple[int, int, int]  # prompts, batch size, new tokens of the generation check
    worker_trials: tuple[int, int]  # trials for the one-worker and the two-worker study
    budget: float  # seconds


PLANS = {
    "gpu": Plan("qwen3_5_4b_text.json", 64, 100, 64, (32, 64, 128), 3, (8, 3, 24), (6, 10), 540),
    "tiny": Plan("qwen3_5_tiny_text.json", 8, 12, 8, (2, 4, 8), 2, (6, 2, 12), (2, 4), 60),
}
WEIGHTS = {"checks": 1.0, "trials": 4.0, "workers": 3.5, "heretic": 3.0}  # shares of the budget


class Budget:
    """Deadlines for the parts of a run: each gets its weight's share of the time still left."""

    def __init__(self, seconds: float, weights: dict[str, float], clock=time.time, start: float | None = None):
        self.clock, self.weights = clock, dict(weights)
        self.end = (clock() if start is None else start) + seconds

    def deadline(self, part: str) -> float:
        weight = self.weights.pop(part)
        now = self.clock()
        return now + max(0.0, self.end - now) * weight / (weight + sum(self.weights.values()))


@dataclass
class Bench:
    """What the parts share: the plan, the model, the prompts, where files go."""

    args: argparse.Namespace
    plan: Plan
    device: str
    loaded: object
    chat: object
    prompts: dict[str, list[str]]
    workdir: Path
    saved: dict = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def prompt_files(self) -> dict[str, Path]:
        """The prompts as one file per side, in slice order (directions, evaluation, spare)."""
        files = {}
        for side, prompts in self.prompts.items():
            files[side] = self.workdir / f"{side}.txt"
            files[side].write_text("\n".join(prompts) + "\n", encoding="utf-8")
        return files

    def saved_model(self) -> Path:
        """The model and tokenizer saved once as a Hugging Face folder (workers and Heretic load it)."""
        if "path" not in self.saved:
            path, start = self.workdir / "model", time.perf_counter()
            self.loaded.model.save_pretrained(str(path))
            self.loaded.tokenizer.save_pretrained(str(path))
            self.saved.update(path=path, seconds=round(time.perf_counter() - start, 2))
        return self.saved["path"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    started = float(os.environ.get(STARTED, time.time()))
    if args.bundle and (args.bundle / "wheels").is_dir() and STARTED not in os.environ:
        return _rerun_in_bundle_venv(args, argv, started)
    plan = PLANS["tiny" if args.tiny else "gpu"]
    budget = Budget(args.budget or plan.budget, WEIGHTS, start=started)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(["bench/gpu.py", *argv]), "plan": plan.__dict__}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="abliterate-gpu-"))
    try:
        try:
            bench = setup(args, plan, workdir, result)
        except Exception as error:  # e.g. out of memory: still leave a JSON that says so
            traceback.print_exc()
            result["setup"] = {"error": f"{type(error).__name__}: {error}"}
            _write(result, args.out, started)
            return 1
        run_parts(bench, budget, result, args.out, started)
    finally:
        for made in ([] if args.workdir else [workdir]) + [Path(p) for p in [os.environ.get(VENVS)] if p]:
            shutil.rmtree(made, ignore_errors=True)
    _write(result, args.out, started)
    print(json.dumps(result, indent=1))
    return 0


def run_parts(bench: Bench, budget: Budget, result: dict, out: Path | None, started: float) -> None:
    """Each part until its deadline; its figures, or its error, go into ``result``."""
    from gpu_checks import run_checks
    from gpu_heretic import run_heretic
    from gpu_trials import trial_loop
    from gpu_workers import worker_scaling

    parts = {"checks": run_checks, "trials": trial_loop, "workers": worker_scaling, "heretic": run_heretic}
    if not os.environ.get(HERETIC_PYTHON):
        del parts["heretic"], budget.weights["heretic"]  # its share goes to the others
    for name, part in parts.items():
        deadline = budget.deadline(name)
        start = time.time()
        print(f"== {name} (until +{deadline - started:.0f} s)", file=sys.stderr, flush=True)
        try:
            result[name] = part(bench, deadline)
        except Exception as error:  # one broken part must not cost the figures of the others
            traceback.print_exc()
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        result[name]["seconds"] = round(time.time() - start, 1)
        _write(result, out, started)
    result.setdefault("heretic", {"skipped": "no Heretic wheels in the bundle (bench/gpu_bundle.py makes them)"})


def setup(args, plan: Plan, workdir: Path, result: dict) -> Bench:
    """The model on the device with random weights, the tokenizer and the prompts."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from abliterate.ablation.loading import LoadedModel
    from abliterate.objectives.refusal import ChatFormat
    from fixtures.tiny import CHAT_TEMPLATE

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        raise SystemExit("error: no GPU here; the 4B model needs one (use --tiny for the CPU rehearsal)")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer, tokenizer_name = _tokenizer(args.bundle)
    tokenizer.chat_template = CHAT_TEMPLATE  # ChatML with Qwen3.5's switch for an empty thinking block
    config = AutoConfig.for_model(**json.loads((CONFIGS / plan.config).read_text()))
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 4B model built on the CPU would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.to(device)  # a no-op unless some buffer was made elsewhere
    loaded = LoadedModel(model, tokenizer, str(CONFIGS / plan.config))
    chat = ChatFormat(enable_thinking=False)
    prompts = _prompts(args.bundle, plan)
    bench = Bench(args, plan, device, loaded, chat, prompts, workdir)
    bench.sync()
    texts = chat.apply(loaded, prompts["harmless"][plan.extraction:plan.extraction + plan.evaluation])
    result["setup"] = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)",
        "device_memory_gib": _gib(torch.cuda.get_device_properties(device).total_memory) if device.startswith("cuda") else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
        "model": f"{type(model).__name__} from bench/configs/{plan.config}, random weights, {str(dtype).removeprefix('torch.')}",
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "linear_attention_kernels": "fla" if _importable("fla") else "torch fallback (flash-linear-attention not installed)",
        "build_s": round(time.perf_counter() - start, 2), "tokenizer": tokenizer_name,
        "prompts": {side: len(p) for side, p in prompts.items()},
        "mean_prompt_tokens": round(statistics.mean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts), 1),
        "note": "random weights: no answer ends early, every refusal pass runs to the token limit (the worst case)",
    }
    return bench


def _tokenizer(bundle: Path | None):
    from transformers import AutoTokenizer

    from fixtures.tiny import tiny_tokenizer

    if bundle and (bundle / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
        return tokenizer, f"{type(tokenizer).__name__} from the bundle ({len(tokenizer)} tokens)"
    return tiny_tokenizer(), "the tiny byte-level BPE (384 tokens; prompts come out about 3x longer than with a real one)"


def _prompts(bundle: Path | None, plan: Plan) -> dict[str, list[str]]:
    """Per side, prompts in slice order: directions, evaluation, then at least one spare."""
    from abliterate.objectives.prompts import load_prompts
    from abliterate.objectives.refuser import prompt_path

    if bundle and (bundle / "prompts").is_dir():
        prompts = {side: load_prompts(str(bundle / "prompts" / f"{side}.txt")) for side in ("harmful", "harmless")}
    else:  # the shipped refuser's held-out sets: disjoint, in the repository
        prompts = {side: [p for purpose in ("extraction", "evaluation", "confirmation") for p in load_prompts(str(prompt_path(side, purpose)))]
                   for side in ("harmful", "harmless")}
    needed = plan.extraction + plan.evaluation + 1
    for side, found in prompts.items():
        if len(found) < needed:
            raise SystemExit(f"error: {len(found)} {side} prompts, the run needs {needed}; remake the bundle with bench/gpu_bundle.py")
    return prompts


def _rerun_in_bundle_venv(args, argv: list[str], started: float) -> int:
    """Installs the bundle's wheels into venvs (offline) and runs this script again inside one."""
    from gpu_bundle import install

    root = Path(tempfile.mkdtemp(prefix="abliterate-gpu-venvs-"))
    pythons = install(args.bundle, root)
    env = {**os.environ, STARTED: str(started), HERETIC_PYTHON: str(pythons.get("heretic", "")), VENVS: str(root),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"installed the bundle's wheels in {time.time() - started:.0f} s; running inside {pythons['ours']}", file=sys.stderr)
    os.execve(str(pythons["ours"]), [str(pythons["ours"]), str(Path(__file__).resolve()), *argv], env)
    return 1  # not reached


def _write(result: dict, out: Path | None, started: float) -> None:
    result["elapsed_s"] = round(time.time() - started, 1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _gib(size: int) -> float:
    return round(size / 2**30, 2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the CPU rehearsal: tiny config, fewer prompts and tokens")
    parser.add_argument("--bundle", type=Path, default=None, help="folder made by bench/gpu_bundle.py (prompts, tokenizer, wheels)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 540, --tiny 60)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the saved model, studies and logs here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
