"""Front quality side by side with Heretic 1.4.0: same model, prompts, answer length and trials.

    python bench/front_vs_heretic.py run --budgets 10,30,100 --seeds 1,2,3 [--tools heretic,ours]
    python bench/front_vs_heretic.py report [--budgets 10,30,100] [--markdown FILE]

``run`` performs every (tool, budget, seed) search that has no result yet (so it resumes after an
interruption), saves front candidates as checkpoints (Heretic's three lowest-refusal ones through
its menu, our whole front up to eight: our trials are cheap and our front is dense, so the points
near Heretic's refusal level are scored too), scores them with one common evaluation and deletes
them. A recorded run of ours whose study is still in bench/out gets its unscored front candidates
scored on the next ``run``. Each run's record (trials.json, evaluation.json) is kept
under bench/front/ in the repository, so a later session can report and add runs without
repeating them; models, studies and logs stay in bench/out/front/. ``report`` scores the fronts (hypervolume of (refusal rate,
KL) against the reference point (1, 1); KL at Heretic's best refusal count, by each tool's own count
and by the common evaluation; seconds per trial), prints the tables and draws one PNG per budget
(bench/front_vs_heretic_b{budget}.png).

Setup: ``bash bench/fetch_real_model.sh``, then a bf16 folder of the model (``--model``; made
once from the GGUF when missing), and Heretic in its own virtualenv (``--heretic-python``; made by
``bench/heretic_eval.sh`` or ``python3 -m venv --system-site-packages V && V/bin/pip install
heretic-llm==1.4.0 && V/bin/pip uninstall -y transformers``). Heretic (AGPL-3.0) is only run.

Prompts (both tools get the same files): directions from advbench[0:64] and rho-benign[0:64];
search evaluation on the first 32 JailbreakBench prompts that are not in advbench[0:64] (4 of its
first 32 are) and rho-benign[64:96]. The common evaluation: 40 further JailbreakBench prompts
that neither search saw, 40 benign-but-edgy prompts (rho-edgy[0:40]) and KL on the 32 harmless
search prompts, 64 new tokens, refusals by this project's markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from searches import BATCH, MODEL, ROOT, WORK, ensure_model, prompt_files, revision, search_heretic, search_ours  # noqa: E402

RECORD = ROOT / "bench" / "front"  # kept: one folder per run with trials.json and evaluation.json
COMMON_TOKENS = 64
OURS_KEEP = 8  # our front candidates given the common evaluation, lowest refusals first
SEARCHES = Path(__file__).resolve().parent / "searches.py"  # runs our search in a subprocess (its _ours command)


# --- runs of protocol 1, kept under bench/front --------------------------------------------------

def run_heretic(run_dir: Path, budget: int, seed: int, prompts: dict[str, Path], model: Path, python: str, keep: int) -> None:
    raw, wall, cpu = search_heretic(run_dir, budget, seed, prompts, model, python, keep)
    _write_run(run_dir, "heretic", budget, seed, wall, raw["trials"], {"base_refusals": raw["base_refusals"], "cpu_seconds": cpu})


def run_ours(run_dir: Path, budget: int, seed: int, prompts: dict[str, Path], model: Path, keep: int,
             overrides: dict | None, sampler: str | None, code: Path = ROOT) -> None:
    """Our search through its real service path (a study in SQLite, one worker) in a subprocess,
    with the project's code from ``code`` (another checkout measures an earlier version); the
    first ``keep`` candidates of its front (lowest refusals first) are saved."""
    raw, wall, cpu = search_ours(run_dir, budget, seed, model, keep, overrides, sampler, code)
    _write_run(run_dir, "ours", budget, seed, wall, raw["trials"],
               {"config": overrides, "sampler": sampler, "code": revision(code), "cpu_seconds": cpu})


def unscored_front(name: str, keep: int = OURS_KEEP) -> list[int]:
    """Our recorded run's first ``keep`` front trials (lowest refusals first) without a common evaluation yet."""
    from abliterate.search.front import pareto_front

    run = json.loads((RECORD / name / "trials.json").read_text())
    evaluation = RECORD / name / "evaluation.json"
    scored = set(json.loads(evaluation.read_text())) if evaluation.exists() else set()
    feasible = [t for t in run["trials"] if t["refusals"] is not None]
    front = [feasible[i] for i in pareto_front([(t["refusals"], t["kl"]) for t in feasible])]
    front.sort(key=lambda t: (t["refusals"], t["kl"]))
    return [t["number"] for t in front[:keep] if str(t["number"]) not in scored]


def extend_ours(run_dir: Path, model: Path, keep: int, code: Path = ROOT) -> None:
    """Save the recorded run's unscored front candidates from its study (no new search); the
    record's timing is left as the search made it."""
    record = json.loads((RECORD / run_dir.name / "trials.json").read_text())
    command = [sys.executable, str(SEARCHES), "_ours", "--dir", str(run_dir), "--model", str(model), "--keep", str(keep),
               "--budget", str(record["budget"]), "--seed", str(record["seed"]), "--config", json.dumps(record.get("config") or {}),
               "--sampler", record.get("sampler") or "", "--prompts", str(WORK), "--only", ",".join(map(str, unscored_front(run_dir.name, keep)))]
    with open(run_dir / "log-extend.txt", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)})
    saved = {t["number"]: t["saved"] for t in json.loads((run_dir / "raw.json").read_text())["trials"] if t["saved"]}
    for row in record["trials"]:
        row["saved"] = saved.get(row["number"])
    (RECORD / run_dir.name / "trials.json").write_text(json.dumps(record, indent=1))


def _write_run(run_dir: Path, tool: str, budget: int, seed: int, wall: float, trials: list[dict], extra: dict) -> None:
    load = os.getloadavg()[0]
    record = RECORD / run_dir.name
    record.mkdir(parents=True, exist_ok=True)
    (record / "trials.json").write_text(json.dumps({"tool": tool, "budget": budget, "seed": seed, "wall_seconds": wall,
                                                     "load_at_end": load, "trials": trials, **extra}, indent=1))


# --- the common evaluation ---------------------------------------------------------------------

def evaluate_candidates(run_dir: Path, prompts: dict[str, Path], model: Path) -> None:
    """Held-out refusals, over-refusal and KL of every saved candidate; the checkpoints are then removed."""
    import torch

    from abliterate.ablation import load_model
    from abliterate.objectives.kl import kl_divergence, response_logprobs
    from abliterate.objectives.prompts import read_prompts
    from abliterate.objectives.refusal import ChatFormat, MarkerProxy

    record = RECORD / run_dir.name
    run = json.loads((record / "trials.json").read_text())
    chat, proxy = ChatFormat(), MarkerProxy(max_new_tokens=COMMON_TOKENS, batch_size=40, samples=0)
    harmful, edgy = read_prompts(prompts["harmful_heldout"]), read_prompts(prompts["edgy_heldout"])
    harmless = read_prompts(prompts["harmless_evaluation"])
    base_logprobs = torch.load(ensure_base(prompts, model))
    evaluation = record / "evaluation.json"
    results = json.loads(evaluation.read_text()) if evaluation.exists() else {}
    for row in run["trials"]:
        if not row.get("saved") or str(row["number"]) in results:
            continue
        edited = load_model(row["saved"], "bf16", "cpu")
        kl = float(kl_divergence(base_logprobs, response_logprobs(edited.model, edited.tokenizer, chat.apply(edited, harmless),
                                                                  batch_size=BATCH)).mean())
        results[str(row["number"])] = {"kl": kl, **_common_figures(edited, proxy, harmful, edgy)}
        del edited
        shutil.rmtree(row["saved"], ignore_errors=True)
    evaluation.write_text(json.dumps(results, indent=1))


def ensure_base(prompts: dict[str, Path], model: Path) -> Path:
    """The base model's answer log-probabilities (file) and common figures (recorded), made once."""
    import torch

    from abliterate.ablation import load_model
    from abliterate.objectives.kl import response_logprobs
    from abliterate.objectives.prompts import read_prompts
    from abliterate.objectives.refusal import ChatFormat, MarkerProxy

    base_file = WORK / "base_logprobs.pt"
    if not base_file.exists() or not (RECORD / "base_common.json").exists():
        chat, proxy = ChatFormat(), MarkerProxy(max_new_tokens=COMMON_TOKENS, batch_size=40, samples=0)
        base = load_model(str(model), "bf16", "cpu")
        logprobs = response_logprobs(base.model, base.tokenizer, chat.apply(base, read_prompts(prompts["harmless_evaluation"])),
                                     batch_size=BATCH)
        torch.save(logprobs, base_file.with_suffix(".partial"))
        base_file.with_suffix(".partial").rename(base_file)  # a reader never sees half a file
        figures = _common_figures(base, proxy, read_prompts(prompts["harmful_heldout"]), read_prompts(prompts["edgy_heldout"]))
        RECORD.mkdir(parents=True, exist_ok=True)
        kept = RECORD / "base_common.json"
        if not kept.exists():
            kept.write_text(json.dumps(figures))
        elif json.loads(kept.read_text()) != figures:
            # a record is never rewritten by a re-run: the runs scored against it stay comparable
            print(f"base model re-measured as {figures}, the record {kept} says {kept.read_text()}; the record is kept", flush=True)
    return base_file


def _common_figures(loaded, proxy, harmful, edgy) -> dict:
    score, over = proxy.score(loaded, harmful), proxy.score(loaded, edgy)
    return {"refusals": score.counts.get("refusal", 0), "degenerate": score.counts.get("degenerate", 0), "total": score.total,
            "over_refusals": over.counts.get("refusal", 0), "over_total": over.total}


# --- scoring -----------------------------------------------------------------------------------

def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both coordinates minimised) inside the box below ``reference``."""
    staircase, best_y = [], reference[1]
    for x, y in sorted((x, y) for x, y in points if x < reference[0] and y < reference[1]):
        if y < best_y:  # a point on the front: lower KL than every point with fewer refusals
            staircase.append((x, y))
            best_y = y
    area = 0.0
    for i, (x, y) in enumerate(staircase):
        right = staircase[i + 1][0] if i + 1 < len(staircase) else reference[0]
        area += (right - x) * (reference[1] - y)
    return area


def front_points(run: dict) -> list[tuple[float, float]]:
    """(refusal rate by the tool's own count, KL) of every finished trial the tool scored."""
    return [(t["refusals"] / t["total"], t["kl"]) for t in run["trials"] if t["refusals"] is not None]


def kl_at(points: list[tuple[int, float]], refusals: int) -> float | None:
    """The least KL among points with at most ``refusals`` refusals, or None if none has so few."""
    kls = [kl for r, kl in points if r <= refusals]
    return min(kls) if kls else None


def load_runs(record: Path) -> list[dict]:
    runs = []
    for path in sorted(record.glob("*/trials.json")):
        run = json.loads(path.read_text())
        evaluation = path.parent / "evaluation.json"
        run["evaluation"] = json.loads(evaluation.read_text()) if evaluation.exists() else {}
        run["name"] = path.parent.name
        runs.append(run)
    return runs


def report(args) -> None:
    import statistics

    runs = load_runs(RECORD)
    base = json.loads((RECORD / "base_common.json").read_text()) if (RECORD / "base_common.json").exists() else None
    lines = []
    label = args.label
    for budget in args.budgets:
        pairs = []
        for seed in args.seeds:
            h = next((r for r in runs if r["name"] == f"heretic-b{budget}-s{seed}"), None)
            o = next((r for r in runs if r["name"] == f"{label}-b{budget}-s{seed}"), None)
            if h and o:
                pairs.append((seed, h, o))
        if not pairs:
            continue
        lines += [f"### {budget} trials ({label} vs Heretic 1.4.0)", "",
                  "| seed | HV Heretic | HV ours | Heretic best (own count) | ours at that count | KL ratio | "
                  "common: Heretic best | common: ours at that count | KL ratio | s/trial Heretic | s/trial ours | "
                  "CPU s/trial Heretic | CPU s/trial ours |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        hv, ratios, common_ratios = {"h": [], "o": []}, [], []
        for seed, h, o in pairs:
            hv["h"].append(hypervolume(front_points(h)))
            hv["o"].append(hypervolume(front_points(o)))
            best = min(t["refusals"] for t in h["trials"])
            h_kl = kl_at([(t["refusals"], t["kl"]) for t in h["trials"]], best)
            o_kl = kl_at([(t["refusals"], t["kl"]) for t in o["trials"] if t["refusals"] is not None], best)
            ratio = o_kl / h_kl if o_kl is not None and h_kl else None
            ratios.append(ratio)
            hc, oc = _common_points(h), _common_points(o)
            if hc:
                c_best = min(r for r, _ in hc)
                c_h, c_o = kl_at(hc, c_best), kl_at(oc, c_best)
                c_ratio = c_o / c_h if c_o is not None and c_h else None
            else:
                c_best = c_h = c_o = c_ratio = None
            common_ratios.append(c_ratio)
            lines.append(
                f"| {seed} | {hv['h'][-1]:.4f} | {hv['o'][-1]:.4f} | {best}/{h['trials'][0]['total']} at {h_kl:.4f} | "
                f"{_kl(o_kl)} | {_ratio(ratio)} | "
                f"{'n/a' if c_best is None else f'{c_best}/40 at {c_h:.4f}'} | {_kl(c_o)} | {_ratio(c_ratio)} | "
                f"{statistics.median(t['seconds'] for t in h['trials']):.1f} | {statistics.median(t['seconds'] for t in o['trials']):.1f} | "
                f"{_cpu_per_trial(h)} | {_cpu_per_trial(o)} |")
        lines += ["", f"Mean hypervolume: Heretic {statistics.mean(hv['h']):.4f}, ours {statistics.mean(hv['o']):.4f}; "
                  f"ours higher in {sum(o > h for h, o in zip(hv['h'], hv['o']))} of {len(pairs)} seeds. "
                  f"KL ratio at Heretic's best count (own counts): {', '.join(_ratio(r) for r in ratios)}; "
                  f"common evaluation: {', '.join(_ratio(r) for r in common_ratios)}.", ""]
        _plot(budget, pairs, label)
    if base:
        lines.append(f"Base model, common evaluation: {base['refusals']}/40 refusals, over-refusal {base['over_refusals']}/40.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def _common_points(run: dict) -> list[tuple[int, float]]:
    return [(e["refusals"] + e["degenerate"], e["kl"]) for e in run["evaluation"].values()]


def _cpu_per_trial(run: dict) -> str:
    """The whole search's CPU seconds (model load and directions included) over its trials."""
    return f"{run['cpu_seconds'] / len(run['trials']):.1f}" if run.get("cpu_seconds") else "n/a"


def _kl(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.4f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _plot(budget: int, pairs: list, label: str) -> None:
    """Per seed: the fronts by each tool's own count (top) and the common evaluation of the saved
    candidates (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(pairs), figsize=(max(4.2 * len(pairs), 6.4), 7.0), squeeze=False, sharey="row")
    for column, (seed, h, o) in enumerate(pairs):
        own, common = axes[0][column], axes[1][column]
        for run, colour, name in ((h, "tab:red", "Heretic 1.4.0"), (o, "tab:blue", "abliterate")):
            points = front_points(run)
            own.scatter([p[0] for p in points], [p[1] for p in points], s=10, alpha=0.35, color=colour)
            staircase = _staircase(points)
            if staircase:
                own.step([p[0] for p in staircase], [p[1] for p in staircase], where="post", color=colour,
                         label=f"{name}: HV {hypervolume(points):.3f}")
            scored = [(r / 40, kl) for r, kl in _common_points(run)]
            common.scatter([p[0] for p in scored], [p[1] for p in scored], s=24, color=colour, label=name)
        own.set_yscale("log")
        own.set_xlabel("refusal rate (own markers)")
        own.set_title(f"seed {seed}")
        own.legend(fontsize=7)
        common.set_yscale("log")
        common.set_xlabel("held-out refusal rate (common evaluation, 40 prompts)")
        common.legend(fontsize=7)
    axes[0][0].set_ylabel("KL (first token, harmless)")
    axes[1][0].set_ylabel("KL (common evaluation)")
    figure.suptitle(f"After {budget} trials, Qwen2.5-Coder-0.5B-Instruct (bf16, CPU)")
    figure.tight_layout()
    suffix = "" if label == "ours" else f"_{label}"  # a variant's plot beside, not over, the default's
    figure.savefig(ROOT / "bench" / f"front_vs_heretic_b{budget}{suffix}.png", dpi=110)
    plt.close(figure)


def _staircase(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    staircase, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            staircase.append((x, y))
            best = y
    return staircase


# --- the command line --------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    report_ = commands.add_parser("report")
    for p in (run, report_):
        p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[10, 30, 100])
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
        p.add_argument("--label", default="ours", help="name of our variant's runs")
    run.add_argument("--tools", default="heretic,ours")
    run.add_argument("--model", default=str(MODEL))
    run.add_argument("--heretic-python", default=os.environ.get("HERETIC_PYTHON", "/tmp/heretic-venv/bin/python"))
    run.add_argument("--keep", type=int, default=3, help="Heretic's front candidates given the common evaluation")
    run.add_argument("--keep-ours", type=int, default=OURS_KEEP, help="our front candidates given the common evaluation")
    run.add_argument("--config", default=None, help='JSON overrides of our StudyConfig (a variant), e.g. {"space": {"peak": [0.5, 0.9]}}')
    run.add_argument("--sampler", default=None)
    run.add_argument("--code", default=str(ROOT), help="checkout whose search runs as ours (an earlier version, say)")
    report_.add_argument("--markdown", default=None)
    args = parser.parse_args()

    if args.command == "report":
        report(args)
    else:
        model = Path(args.model)
        ensure_model(model)
        prompts = prompt_files(WORK)
        ensure_base(prompts, model)
        overrides = json.loads(args.config) if args.config else None
        for budget in args.budgets:
            for seed in args.seeds:
                for tool in args.tools.split(","):
                    name = f"heretic-b{budget}-s{seed}" if tool == "heretic" else f"{args.label}-b{budget}-s{seed}"
                    run_dir = WORK / "runs" / name
                    if (RECORD / name / "evaluation.json").exists():
                        if tool == "heretic" or not unscored_front(name, args.keep_ours) or not (run_dir / "study.db").exists():
                            continue
                        print(f"{time.strftime('%H:%M:%S')} {name}: saving front trials {unscored_front(name, args.keep_ours)}", flush=True)
                        extend_ours(run_dir, model, args.keep_ours, Path(args.code))
                    elif not (RECORD / name / "trials.json").exists():
                        print(f"{time.strftime('%H:%M:%S')} {name}: searching", flush=True)
                        if tool == "heretic":
                            run_heretic(run_dir, budget, seed, prompts, model, args.heretic_python, args.keep)
                        else:
                            run_ours(run_dir, budget, seed, prompts, model, args.keep_ours, overrides, args.sampler, Path(args.code))
                    print(f"{time.strftime('%H:%M:%S')} {name}: common evaluation", flush=True)
                    evaluate_candidates(run_dir, prompts, model)


if __name__ == "__main__":
    main()
