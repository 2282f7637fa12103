"""One search per tool, shared by the benches: the prompt files every tool searches on, the
development model's folder, Heretic's search and ours, each in a subprocess, and the bookkeeping
of a run (CPU seconds of children, the code's revision, the CPU's name).

Our search runs through its real service path (a study in SQLite, one worker) as

    python bench/searches.py _ours --dir DIR --budget N --seed S --model M --keep K [--config JSON] ...

with the project's code from ``$PYTHONPATH`` (another checkout measures an earlier version). The
benches that compare fronts (bench/fair_front.py, bench/front_vs_heretic.py) and cost trials
(bench/trial_cost.py) call :func:`search_ours` and :func:`search_heretic`; Heretic (AGPL-3.0) is
only run, by bench/heretic_front.py under the Python of its own virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("PYTHONPATH") or str(ROOT))  # _ours runs the checkout it is given

WORK = ROOT / "bench" / "out" / "front"  # scratch: prompt files, studies, checkpoints, logs
GGUF = ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct.gguf"
MODEL = ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct-bf16"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
NEW_TOKENS, BATCH = 32, 32  # answer tokens and prompts per batch of every tool's search


# --- prompts -----------------------------------------------------------------------------------

def prompt_files(work: Path) -> dict[str, Path]:
    """The prompt sets as one-per-line files, written once."""
    from abliterate.objectives.prompts import check_disjoint, load_prompts, normalise

    folder = work / "prompts"
    names = ("harmful_extraction", "harmless_extraction", "harmful_evaluation", "harmless_evaluation",
             "harmful_heldout", "edgy_heldout", "harmful_confirmation", "harmless_confirmation")
    paths = {name: folder / f"{name}.txt" for name in names}
    if all(p.exists() for p in paths.values()):
        return paths
    extraction = load_prompts("advbench[0:64]")
    seen = {normalise(p) for p in extraction}
    jailbreak = [p for p in load_prompts("jailbreakbench") if normalise(p) not in seen]
    jailbreak_all = {normalise(p) for p in load_prompts("jailbreakbench")}
    sets = {
        "harmful_extraction": extraction, "harmless_extraction": load_prompts("rho-benign[0:64]"),
        "harmful_evaluation": jailbreak[:32], "harmless_evaluation": load_prompts("rho-benign[64:96]"),
        "harmful_heldout": jailbreak[32:72], "edgy_heldout": load_prompts("rho-edgy[0:40]"),
        # The study format needs confirmation sets; the comparison does not use them.
        "harmful_confirmation": [p for p in load_prompts("advbench[64:]") if normalise(p) not in jailbreak_all][:32], "harmless_confirmation": load_prompts("rho-benign[96:128]"),
    }
    check_disjoint(**{k: v for k, v in sets.items() if k != "edgy_heldout"})
    folder.mkdir(parents=True, exist_ok=True)
    for name, prompts in sets.items():
        assert not any("\n" in p for p in prompts)
        paths[name].write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return paths


def prompts_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def ensure_model(model: Path) -> None:
    if (model / "config.json").exists():
        return
    from abliterate.ablation import export_checkpoint, load_model

    export_checkpoint(load_model(str(GGUF), dtype="bf16", device="cpu"), model)


# --- one search per tool -------------------------------------------------------------------------

def heretic_startup(budget: int) -> int:
    """Heretic's random start-up trials: 5 of 10 as in the issue's run, else 30 % (its 60 of 200)."""
    return max(5, round(0.3 * budget))


def search_heretic(run_dir: Path, budget: int, seed: int, prompts: dict[str, Path], model: Path, python: str, keep: int,
                   system: str = QWEN_SYSTEM, new_tokens: int = NEW_TOKENS) -> tuple[dict, float, float]:
    """Heretic's own search in ``run_dir``, its first ``keep`` front trials saved as folders under
    ``run_dir/candidates``: (its raw record, wall seconds, CPU seconds of the child)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    (run_dir / "config.toml").write_text(f"""model = "{model}"
dtypes = ["bfloat16"]
device_map = "cpu"
batch_size = {BATCH}
max_response_length = {new_tokens}
response_prefix = ""
seed = {seed}
n_trials = {budget}
n_startup_trials = {heretic_startup(budget)}
system_prompt = {json.dumps(system)}
study_checkpoint_dir = "checkpoints"
export_strategy = "merge"
[good_prompts]
dataset = "{prompts['harmless_extraction']}"
[bad_prompts]
dataset = "{prompts['harmful_extraction']}"
[good_evaluation_prompts]
dataset = "{prompts['harmless_evaluation']}"
[bad_evaluation_prompts]
dataset = "{prompts['harmful_evaluation']}"
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start, cpu = time.time(), children_cpu()
    with open(run_dir / "log.txt", "w") as log:
        subprocess.run([python, str(ROOT / "bench" / "heretic_front.py"), "--model", str(model), "--save", str(keep),
                        "--save-dir", str(run_dir / "candidates"), "--trials-out", str(run_dir / "raw.json")],
                       cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((run_dir / "raw.json").read_text()), time.time() - start, children_cpu() - cpu


def search_ours(run_dir: Path, budget: int, seed: int, model: Path, keep: int, overrides: dict | None = None,
                sampler: str | None = None, code: Path = ROOT, prompt_folder: Path = WORK) -> tuple[dict, float, float]:
    """Our search in ``run_dir`` on the search prompts of ``prompt_files(prompt_folder)``, its first ``keep``
    front trials exported under ``run_dir/candidates``: (raw record, wall seconds, CPU seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "study.db").unlink(missing_ok=True)
    start, cpu = time.time(), children_cpu()
    raw = _run_ours(run_dir, budget, seed, model, keep, overrides or {}, sampler or "", prompt_folder, code, "log.txt")
    return raw, time.time() - start, children_cpu() - cpu


def _run_ours(run_dir: Path, budget: int, seed: int, model: Path, keep: int, config: dict, sampler: str,
              prompt_folder: Path, code: Path, log_name: str, only: str = "") -> dict:
    """``searches.py _ours`` in a subprocess with ``code``'s checkout; its raw.json."""
    command = [sys.executable, __file__, "_ours", "--dir", str(run_dir), "--budget", str(budget), "--seed", str(seed),
               "--model", str(model), "--keep", str(keep), "--config", json.dumps(config), "--sampler", sampler,
               "--prompts", str(prompt_folder), "--only", only]
    with open(run_dir / log_name, "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)})
    return json.loads((run_dir / "raw.json").read_text())


def _ours_in_process(args) -> None:
    import torch

    import abliterate.search
    from abliterate.search.checkpoint import export_trial
    from abliterate.search.space import SearchSpace
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.records import TrialRecord

    # OMP_NUM_THREADS, when set, gives each tool its own cores for a side-by-side run
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    run_dir, prompts = Path(args.dir), prompt_files(Path(args.prompts) if args.prompts else WORK)
    code = Path(os.environ.get("PYTHONPATH", ROOT)).resolve()
    if not Path(abliterate.search.__file__).resolve().is_relative_to(code):
        raise SystemExit(f"--code {code}: this Python imports abliterate from {Path(abliterate.search.__file__).parent.parent}; "
                         "run the bench with the Python of a venv where that checkout is installed (pip install -e)")
    overrides = json.loads(args.config)  # StudyConfig fields; "space" holds SearchSpace fields
    space = SearchSpace.from_dict({**SearchSpace().as_dict(), **overrides.pop("space", {})})
    options = overrides | ({"sampler": args.sampler} if args.sampler else {})
    options = {"dtype": "bf16"} | options  # bf16 unless a run asks for another (fair_front.py --dtype)
    config = StudyConfig(
        model=args.model, n_trials=args.budget, seed=args.seed, space=space, max_new_tokens=NEW_TOKENS, batch_size=BATCH,
        harmful={p: str(prompts[f"harmful_{p}"]) for p in ("extraction", "evaluation", "confirmation")},
        harmless={p: str(prompts[f"harmless_{p}"]) for p in ("extraction", "evaluation", "confirmation")}, **options)
    url = f"sqlite:///{run_dir / 'study.db'}"
    storage = open_storage(url)
    if not args.only:
        create_or_resume(storage, "front", config)
        run_worker(url, "front", device="cpu")

    study = __import__("optuna").load_study(study_name="front", storage=storage)
    rows, total = [], len(prompts_of(prompts["harmful_evaluation"]))
    for t in study.trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        record = TrialRecord.of(t)
        scored = t.state.name == "COMPLETE" and record.feasible
        # a pruned trial is dominated: it has no front point, but its time counts
        rows.append({"number": t.number, "refusals": round(t.values[0] * total) if scored else None, "total": total,
                     "kl": record.kl, "capability_accuracy": record.capability_accuracy, "params": t.params,
                     "pruned": t.state.name == "PRUNED",
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds(), "saved": None})
    from fair_protocol import candidates

    front = candidates(rows, len(rows))  # the fair protocol's rule: fewest refusals first, then KL
    only = {int(n) for n in args.only.split(",")} if args.only else None
    for row in front[: args.keep] if only is None else [r for r in front if r["number"] in only]:
        # the product's own export: every method and intervention a study can search re-bakes from the params
        row["saved"] = str(export_trial(url, "front", row["number"], str(run_dir / "candidates" / f"trial-{row['number']}"),
                                        device="cpu", overwrite=True))
    from abliterate.storage.records import STARTS

    (run_dir / "raw.json").write_text(json.dumps({"trials": rows, "starts": study.user_attrs.get(STARTS)}, indent=1))


def export_again(run_dir: Path, study: Path, number: int, model: Path, record: dict, prompt_folder: Path) -> Path:
    """Trial ``number`` of our kept ``study`` (a copy of a search's study.db, with its directions)
    exported again into ``run_dir``, as the search exported it: ``record`` is the run's
    trials.json (budget, seed, config, dtype)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study, run_dir / "study.db")
    config = {**(record.get("config") or {}), "dtype": record.get("dtype", "bf16")}
    raw = _run_ours(run_dir, record["budget"], record["seed"], model, 0, config, "", prompt_folder, ROOT, "log-export.txt", str(number))
    return Path({t["number"]: t["saved"] for t in raw["trials"]}[number])


# --- the bookkeeping of a run --------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("unknown" where there is none): for records."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def children_cpu() -> float:
    """CPU seconds of finished child processes: comparable between runs on a loaded machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def revision(code: Path) -> str:
    head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # bench/front is where records land (a snapshot checkout links it to the main one's): not code
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/front"],
                           capture_output=True, text=True).stdout
    return head + ("+changes" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description="our search in this process (run by search_ours)")
    commands = parser.add_subparsers(dest="command", required=True)
    inner = commands.add_parser("_ours")
    for name in ("--dir", "--model", "--sampler", "--prompts"):
        inner.add_argument(name, default="")
    inner.add_argument("--config", "--space", dest="config", default="{}")
    inner.add_argument("--only", default="", help="save these trials of the finished study; no search")
    for name in ("--budget", "--seed", "--keep"):
        inner.add_argument(name, type=int)
    _ours_in_process(parser.parse_args())


if __name__ == "__main__":
    main()
