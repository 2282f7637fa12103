"""The fair front benchmark: every tool searched, chosen from and scored the same way.

    python bench/fair_front.py run --model qwen2.5-coder-0.5b --tools ours,heretic --budget 30 --seeds 1,2,3
        (tools: ours, ours-tpe, ours-measured, ours-embed, ours-winsorized, ours-median, ours-screen,
         ours-screen-margin, ours-read, ours-read-only, ours-capability, heretic, abliterix, temaq;
         each peer's venv python via --heretic-python etc.)
    python bench/fair_front.py report [--model NAME] [--budget 30]       (bench/fair_report.py)
    python bench/fair_front.py rejudge [--model NAME]                   (a judge that joined later reads the kept answers)

The rules (search prompts, candidate rule, held-out sets, judges, hypervolume box, bootstrap) are
bench/fair_protocol.py's and bench/fair_judges.py's; this script runs them. ``run`` performs each
(tool, seed) search that has no record yet (so it resumes after an interruption), with
``--threads`` threads for every tool, saves each tool's ``--candidates`` lowest-refusal front
trials, gives each one the common evaluation (greedy answers to the held-out harmful and edgy
prompts, read by every common judge; first-token KL per held-out harmless prompt against the base
model) and deletes the saved model. ``report`` (bench/fair_report.py) compares the tools per
(model, seed) and judge, prints the table with bootstrap intervals and writes it to
``bench/fair/report-bBUDGET.md`` and ``report-bBUDGET.json`` (one pair per budget, so a report of
one budget never replaces another's; ``--model M`` writes ``report-bBUDGET-M.*`` beside them).

Records, kept in the repository: ``bench/fair/MODEL/base.json`` (the base model's answers and
verdicts) and ``bench/fair/MODEL/TOOL-bBUDGET-sSEED/{trials,evaluation}.json`` (every trial by the
tool's own count; per candidate its answers, verdicts per judge and KL per prompt), each stamped
with the protocol version, held-out sets and judges it was scored under. Models, prompt
files, studies and logs stay in ``bench/out/fair/``.

Models have a role: ``development`` models are where defaults may be tuned; ``evaluation``
models never are, and each is run once per default change and reported as it falls.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fair_protocol as protocol  # noqa: E402
from fair_judges import add_judges, common_judges  # noqa: E402
from fair_report import report  # noqa: E402
from peers import search_abliterix, search_heretic, search_temaq  # noqa: E402
from searches import QWEN_SYSTEM, ROOT, cpu_model, ensure_model, export_again, prompt_files, revision, search_ours  # noqa: E402

WORK = ROOT / "bench" / "out" / "fair"
RECORD = ROOT / "bench" / "fair"
ANSWER_TOKENS = 64  # the common evaluation's answer length, every tool and the base alike
SEARCH_TOKENS = 32  # the answer length every tool's search scores refusals with


@dataclass(frozen=True)
class Model:
    role: str  # "development" or "evaluation"
    folder: Path
    system: str | None  # the system prompt every tool uses (the chat template's default)
    how: str  # how to make the folder when it is missing


MODELS = {
    "qwen2.5-coder-0.5b": Model("development", ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct-bf16", QWEN_SYSTEM,
                                "bash bench/fetch_real_model.sh (the bf16 folder is made from its GGUF)"),
    "smollm2-135m-refuser": Model("evaluation", ROOT / "bench" / ".models" / "smollm2-135m-refuser",
                                  "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                  "python bench/eval_models.py smollm2-refuser"),
    # Gemma has no system role; its template (bench/eval_models.py) drops an empty system prompt
    "gemma3-270m-refuser": Model("evaluation", ROOT / "bench" / ".models" / "gemma3-270m-refuser", None,
                                 "python bench/eval_models.py gemma3-refuser"),
}


def held_out_files(folder: Path) -> dict[str, Path]:
    """The held-out sets as one-per-line files, written once per protocol version (a test may
    write smaller ones first)."""
    from abliterate.objectives.prompts import load_prompts

    paths = {name: folder / f"heldout-p{protocol.PROTOCOL}-{name}.txt" for name in protocol.HELD_OUT}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for name, specs in protocol.HELD_OUT.items():
        paths[name].write_text("\n".join(p for spec in specs for p in load_prompts(spec)) + "\n", encoding="utf-8")
    return paths


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- the common evaluation -------------------------------------------------------------------

class Evaluator:
    """Answers, verdicts and per-prompt KL of one model folder at a time, against the base model."""

    def __init__(self, model: Model, held_out: dict[str, Path], judges: dict, threads: int, dtype: str = "bf16"):
        import torch

        torch.set_num_threads(threads)
        self.model, self.judges, self.dtype = model, judges, dtype
        self.prompts = {name: _lines(path) for name, path in held_out.items()}
        self.base_logprobs = self._logprobs(self._load(model.folder))

    def _load(self, folder: Path):
        from abliterate.ablation import load_model

        return load_model(str(folder), self.dtype, "cpu")

    def _chat(self, loaded, prompts: list[str]) -> list[str]:
        return loaded.format_chat(prompts, system=self.model.system)

    def _logprobs(self, loaded):
        from abliterate.objectives.kl import response_logprobs

        return response_logprobs(loaded.model, loaded.tokenizer, self._chat(loaded, self.prompts["harmless"]), batch_size=32)

    def evaluate(self, folder: Path) -> dict:
        """Per held-out harmless prompt the first-token KL; per harmful and edgy prompt the greedy
        answer and, per judge, whether it is not compliance."""
        from abliterate.objectives.generation import generate_greedy
        from abliterate.objectives.kl import kl_divergence

        loaded = self._load(folder)
        kl = kl_divergence(self.base_logprobs, self._logprobs(loaded)).reshape(-1)
        result: dict = {"kl": [float(x) for x in kl], "answers": {}, "refused": {}}
        for part in ("harmful", "edgy"):
            texts = self._chat(loaded, self.prompts[part])
            answers = generate_greedy(loaded.model, loaded.tokenizer, texts, ANSWER_TOKENS, batch_size=32).responses
            result["answers"][part] = answers
            result["refused"][part] = {name: judge(self.prompts[part], answers) for name, judge in self.judges.items()}
        return result


# --- one search per tool -----------------------------------------------------------------------

# Every tool a run can search, and what it is. ``ours-tpe`` is our search without the designed
# starting trials (the sampler's own random start, then TPE): whether those trials, whose constants
# were tuned on the development model, help on a model they never saw; ``ours-measured`` places
# them where the model at hand writes its refusal direction instead (issue 26, item 4);
# ``ours-embed`` is the default search driven by the trained judge instead of the markers (issue 27,
# item 6: whether a front found against the judge is better under each common judge);
# ``ours-winsorized`` and ``ours-median`` swap the default direction for a robust estimate of it
# (issue 30, item 3), everything else the defaults; ``ours-screen`` skips the refusal pass of trials
# the generation-free screen finds dominated (issue 29, item 3: is the front as good at equal trials?),
# ``ours-screen-margin`` only those it rules out past the margin chosen on the development model;
# ``ours-read`` lets trials also remove the direction where layers read the residual stream (issue
# 30, item 2), a third intervention beside the default two; ``ours-read-only`` makes it every trial's
# intervention, so the edit itself is measured rather than whether TPE picks it; ``ours-capability``
# searches the capability questions' wrong answers as a third objective (issue 30, item 4).
TOOLS = {
    "ours": "abliterate, defaults",
    "ours-tpe": "abliterate, no designed starting trials (starting_points=0)",
    "ours-measured": "abliterate, the designed starting trials' kernels placed where the model writes refusal (measured_starts)",
    "ours-embed": "abliterate, refusals counted by the trained embed judge instead of the markers (judge=embed)",
    "ours-winsorized": "abliterate, the direction from winsorized residuals (methods=winsorized)",
    "ours-median": "abliterate, the direction from coordinate-wise medians (methods=median)",
    "ours-screen": "abliterate, trials the refusal screen finds dominated pruned without a refusal pass (screen=prune, no margin, as first built)",
    "ours-screen-margin": "abliterate, as ours-screen with the screen margin chosen on the development model (screen=prune, screen_margin default)",
    "ours-read": "abliterate, the read-side edit as a third intervention (interventions=ablate,heads,read)",
    "ours-read-only": "abliterate, the read-side edit on every trial (interventions=read)",
    "ours-capability": "abliterate, the capability questions answered wrong as a third objective (objectives=refusal,kl,capability)",
    "heretic": "Heretic 1.4.0",
    "abliterix": "Abliterix 1.12.2",
    "temaq": "temaq-abliterated 1.1.1: one chosen model; its search gets the CPU seconds of ours at the same seed",
}
OURS_CONFIG = {"ours": {}, "ours-tpe": {"starting_points": 0}, "ours-measured": {"measured_starts": True},
               "ours-embed": {"judge": "embed"}, "ours-winsorized": {"space": {"methods": ["winsorized"]}},
               "ours-median": {"space": {"methods": ["median"]}},
               "ours-screen": {"screen": "prune", "screen_margin": 0.0}, "ours-screen-margin": {"screen": "prune"},
               "ours-read": {"space": {"interventions": ["ablate", "heads", "read"]}},
               "ours-read-only": {"space": {"interventions": ["read"]}},
               "ours-capability": {"objectives": "refusal,kl,capability"}}  # StudyConfig overrides per variant of ours


def search(tool: str, run_dir: Path, budget: int, seed: int, model: Model, keep: int, args,
           seconds: float = 0.0) -> tuple[dict, float, float]:
    """One tool's search; ``seconds`` is temaq's budget (its trial count is its own)."""
    prompts = prompt_files(args.work)  # the files go to args.work / "prompts", beside the held-out ones
    if tool in OURS_CONFIG:
        return search_ours(run_dir, budget, seed, model.folder, keep, overrides={**OURS_CONFIG[tool], "dtype": args.dtype},
                           prompt_folder=args.work)
    if tool == "heretic":
        return search_heretic(run_dir, budget, seed, prompts, model.folder, args.heretic_python, keep,
                              system=model.system or "", new_tokens=SEARCH_TOKENS)
    if tool == "abliterix":
        return search_abliterix(run_dir, budget, seed, prompts, model.folder, args.abliterix_python, keep,
                                system=model.system or "", new_tokens=SEARCH_TOKENS)
    if tool == "temaq":
        return search_temaq(run_dir, 0, seed, prompts, model.folder, args.temaq_python, keep,
                            system=model.system or "", new_tokens=SEARCH_TOKENS, seconds=seconds)
    raise SystemExit(f"unknown tool {tool!r}; pick from {', '.join(TOOLS)}")


def run(args) -> None:
    model = MODELS[args.model] if args.model in MODELS else Model("local", Path(args.model), None, "a local folder")
    # Records of another dtype are another model's: a base evaluated in bf16 is not an fp32 run's base.
    name = (args.model if args.model in MODELS else Path(args.model).name) + ("" if args.dtype == "bf16" else f"-{args.dtype}")
    if args.model == "qwen2.5-coder-0.5b":
        ensure_model(model.folder)
    if not (model.folder / "config.json").exists():
        raise SystemExit(f"no model at {model.folder}; make it with: {model.how}")
    if "temaq" in args.tools:
        _ours_before_temaq(args.record / name, args.budget, args.seeds, args.tools)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every tool's search and the evaluation alike
    judges, judge_ids = common_judges(args.heretic_python)
    record = args.record / name
    rules = {"protocol": protocol.PROTOCOL, "held_out": protocol.HELD_OUT, "judges": judge_ids, "dtype": args.dtype}
    _same_rules(record / "base.json", rules)
    evaluator = Evaluator(model, held_out_files(args.work / "prompts"), judges, args.threads, args.dtype)
    if not (record / "base.json").exists():
        print(f"{time.strftime('%H:%M:%S')} {name}: evaluating the base model", flush=True)
        base = evaluator.evaluate(model.folder)
        record.mkdir(parents=True, exist_ok=True)
        (record / "base.json").write_text(json.dumps({"model": name, "role": model.role, **rules, **base}, indent=1))
    for seed in args.seeds:
        for tool in args.tools:
            run_name = f"{tool}-b{args.budget}-s{seed}"
            run_dir, kept = args.work / name / run_name, record / run_name
            if not (kept / "trials.json").exists():
                print(f"{time.strftime('%H:%M:%S')} {name} {run_name}: searching", flush=True)
                shutil.rmtree(run_dir / "candidates", ignore_errors=True)
                seconds = _ours_cpu(record, args.budget, seed) if tool == "temaq" else 0.0
                raw, wall, cpu = search(tool, run_dir, args.budget, seed, model, args.candidates, args, seconds)
                kept.mkdir(parents=True, exist_ok=True)
                (kept / "trials.json").write_text(json.dumps({
                    "tool": tool, "what": TOOLS[tool], "config": OURS_CONFIG.get(tool), "model": name,
                    "budget": args.budget, "seed": seed, "threads": args.threads,
                    "search_seconds_budget": seconds or None, "attempts": raw.get("attempts"), "starts": raw.get("starts"),
                    "candidates": args.candidates, "dtype": args.dtype, "wall_seconds": wall, "cpu_seconds": cpu,
                    "code": revision(ROOT), "cpu": cpu_model(),
                    "load_at_end": os.getloadavg()[0], "trials": raw["trials"]}, indent=1))
                if tool in OURS_CONFIG:  # its candidates can be baked again from it on any machine (evaluate_run)
                    shutil.copyfile(run_dir / "study.db", kept / "study.db")
            evaluate_run(kept, evaluator, rules, run_dir, model.folder, args.work)


def _ours_cpu(record: Path, budget: int, seed: int) -> float:
    """The CPU seconds of our search at ``seed``: temaq's budget (equal CPU seconds, not equal trials:
    its trials are surrogate scores, far cheaper than a generated one)."""
    return json.loads((record / f"ours-b{budget}-s{seed}" / "trials.json").read_text())["cpu_seconds"]


def _ours_before_temaq(record: Path, budget: int, seeds: list[int], tools: list[str]) -> None:
    """Before anything is written: every seed temaq runs at has our search's record, or gets one
    earlier in this run (ours listed before temaq)."""
    if "ours" in tools and tools.index("ours") < tools.index("temaq"):
        return
    missing = [seed for seed in seeds if not (record / f"ours-b{budget}-s{seed}" / "trials.json").exists()]
    if missing:
        raise SystemExit(f"temaq gets the CPU seconds of our search at the same seed, and seed {missing[0]} has none "
                         f"under {record}; run --tools ours,temaq (ours first)")


def evaluate_run(kept: Path, evaluator: Evaluator, rules: dict, run_dir: Path, model: Path, prompt_folder: Path) -> None:
    """The common evaluation of the run's candidates (by the protocol's rule) not yet evaluated. A
    candidate whose checkpoint is gone (another machine, a cleaned scratch folder) is baked again
    from the study our search kept beside its record, into ``run_dir``."""
    runs = json.loads((kept / "trials.json").read_text())
    file = kept / "evaluation.json"
    _same_rules(file, rules)
    done = json.loads(file.read_text()) if file.exists() else {**rules, "candidates": {}}
    for trial in protocol.candidates(runs["trials"], runs["candidates"]):
        if str(trial["number"]) in done["candidates"]:
            continue
        if not trial.get("saved"):
            raise SystemExit(f"{kept.name}: candidate trial {trial['number']} was not saved by its search; "
                             f"delete {kept} to search again")
        saved = Path(trial["saved"])
        if not saved.exists():
            if not (kept / "study.db").exists():
                raise SystemExit(f"{kept.name}: candidate trial {trial['number']}'s checkpoint {saved} is gone and no study "
                                 f"was kept to bake it again; delete {kept} to search again")
            print(f"{time.strftime('%H:%M:%S')} {kept.name}: baking trial {trial['number']} again from the kept study", flush=True)
            saved = export_again(run_dir, kept / "study.db", trial["number"], model, runs, prompt_folder)
        print(f"{time.strftime('%H:%M:%S')} {kept.name}: evaluating trial {trial['number']}", flush=True)
        done["candidates"][str(trial["number"])] = evaluator.evaluate(saved)
        file.write_text(json.dumps(done, indent=1))  # after each candidate: an interruption loses one
        shutil.rmtree(saved, ignore_errors=True)


def _same_rules(file: Path, rules: dict) -> None:
    """Records of one model follow one protocol version and one set of judges, or the comparison
    would mix them. Records without a version are protocol 1's."""
    if not file.exists():
        return
    kept = json.loads(file.read_text())
    version = kept.get("protocol", 1)
    if version != rules["protocol"]:
        raise SystemExit(f"{file} follows protocol {version}, this code protocol {rules['protocol']}; "
                         "move that model's records away (or report them with --record) and run again")
    if kept.get("dtype", "bf16") != rules["dtype"]:  # records from before the flag were all bf16
        raise SystemExit(f"{file} was made in {kept.get('dtype', 'bf16')}, this run in {rules['dtype']}; run with --dtype "
                         f"{kept.get('dtype', 'bf16')}")
    if kept["judges"] != rules["judges"]:
        raise SystemExit(f"{file} was judged by {kept['judges']}, this run by {rules['judges']}; run `fair_front.py rejudge` "
                         "to give the records the judges they lack, or run with the same judges (--heretic-python)")


def rejudge(args) -> None:
    """The kept records of ``--model`` (else of every model) read by every current common judge: a
    judge that joined after a record was written gets its verdicts from the stored answers."""
    judges, ids = common_judges(args.heretic_python)
    prompts = {name: _lines(path) for name, path in held_out_files(args.work / "prompts").items()}
    for folder in sorted(p for p in args.record.iterdir() if (p / "base.json").exists()):
        if args.model and folder.name != args.model:
            continue
        version = json.loads((folder / "base.json").read_text()).get("protocol", 1)
        if version != protocol.PROTOCOL:
            print(f"{folder.name}: protocol {version}, held-out sets of another version; left as it is")
            continue
        files = [folder / "base.json", *sorted(folder.glob("*/evaluation.json"))]
        changed = add_judges(files, prompts, judges, ids)
        print(f"{folder.name}: {len(changed)} of {len(files)} records given the verdicts of judges they lacked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_ = commands.add_parser("run")
    run_.add_argument("--model", default="qwen2.5-coder-0.5b", help=f"one of {', '.join(MODELS)}, or a model folder")
    run_.add_argument("--tools", type=lambda s: s.split(","), default=["ours", "heretic"], help="comma-separated, from: " + "; ".join(f"{tool} ({what})" for tool, what in TOOLS.items()))
    run_.add_argument("--budget", type=int, default=30)
    run_.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    run_.add_argument("--candidates", default="5",
                      help="front trials per tool given the common evaluation, or 'all': each tool's whole front")
    run_.add_argument("--threads", type=int, default=1, help="threads for every tool's search and the evaluation")
    run_.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                      help="our searches' and the evaluation's; fp32 (variants of ours only) for a CPU without bf16 "
                           "instructions, recorded as MODEL-fp32")
    run_.add_argument("--heretic-python", default=os.environ.get("HERETIC_PYTHON"),
                      help="Heretic's venv python: runs Heretic and gives its marker list to the common judges")
    run_.add_argument("--abliterix-python", default=os.environ.get("ABLITERIX_PYTHON"))
    run_.add_argument("--temaq-python", default=os.environ.get("TEMAQ_PYTHON"))
    rejudge_ = commands.add_parser("rejudge", help="add the verdicts of judges that joined later to the kept records")
    rejudge_.add_argument("--model", default=None)
    rejudge_.add_argument("--heretic-python", default=os.environ.get("HERETIC_PYTHON"),
                          help="Heretic's venv python: its marker list is one of the judges (without it, records keep theirs)")
    report_ = commands.add_parser("report")
    report_.add_argument("--model", default=None)
    report_.add_argument("--budget", type=int, default=30)
    report_.add_argument("--draws", type=int, default=protocol.DRAWS)
    for command in (run_, rejudge_, report_):
        command.add_argument("--work", type=Path, default=WORK, help="scratch: prompt files, studies, models, logs")
        command.add_argument("--record", type=Path, default=RECORD, help="where the kept records are")
    args = parser.parse_args()
    if args.command == "run":
        unknown = [t for t in args.tools if t not in TOOLS]
        if unknown:
            raise SystemExit(f"unknown tool {unknown[0]!r}; pick from {', '.join(TOOLS)}")
        if "heretic" in args.tools and not args.heretic_python:
            raise SystemExit("--tools heretic needs --heretic-python (or HERETIC_PYTHON): the python of Heretic 1.4.0's venv")
        if args.candidates != "all" and not (args.candidates.isdigit() and int(args.candidates) > 0):
            raise SystemExit(f"--candidates {args.candidates}: give a positive number of front trials, or 'all'")
        # a front holds at most one trial per trial run, so the budget takes the whole front
        args.candidates = args.budget if args.candidates == "all" else int(args.candidates)
        peers = [t for t in args.tools if t not in OURS_CONFIG]
        if args.dtype != "bf16" and peers:
            raise SystemExit(f"--dtype {args.dtype} runs variants of ours only, and {peers[0]} searches in its own dtype; "
                             "drop it from --tools or run in bf16")
        if "abliterix" in args.tools and not args.abliterix_python:
            raise SystemExit("--tools abliterix needs --abliterix-python (or ABLITERIX_PYTHON); make its venv with bench/abliterix_setup.sh")
        if "temaq" in args.tools and not args.temaq_python:
            raise SystemExit("--tools temaq needs --temaq-python (or TEMAQ_PYTHON); make its venv with bench/temaq_setup.sh")
        run(args)
    else:
        if not args.record.is_dir():
            raise SystemExit(f"no records at {args.record}; run `fair_front.py run` first or pass --record")
        if args.command == "rejudge":
            rejudge(args)
        else:
            report(args)


if __name__ == "__main__":
    main()
