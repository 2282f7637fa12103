"""What a trial costs, against its floor, and how the generation-free screen agrees with the
judged count (issue 29).

    python bench/trial_cost.py run [--model qwen2.5-coder-0.5b] [--trials 20] [--threads 1] [--seed 1] [--screen prune]
                                   [--heretic-python /tmp/heretic-venv/bin/python --heretic-trials 20]
    python bench/trial_cost.py table [--model qwen2.5-coder-0.5b] [--screen prune]
    python bench/trial_cost.py margin [--model qwen2.5-coder-0.5b] [--show]

``run``:
1. our default search as the fair benchmark runs it (bench/fair_front.py: its search prompts,
   bf16, batch 32, 32-token answers, one worker, ``--threads`` torch threads) for ``--trials``
   trials, with the screen recorded (``--screen record``, or ``prune``); the worker records each
   trial's wall and CPU seconds by step;
2. every feasible trial's edit baked again and its *floor* timed: one KL pass over the KL prompts
   and one teacher-forced pass over the screened refusal prompts, both from the first edited layer
   up (the prefix cache), at the study's batch size; beside it the same KL pass run in full, its
   value checked equal to the cached one, and a whole refusal pass judged by the markers (no
   pruning: a pruned trial's count is only a bound), which the screen is compared with;
3. with ``--heretic-python``, Heretic 1.4.0 searching the same model on the same prompts with the
   same threads for ``--heretic-trials`` trials, its CPU seconds per trial from that run.
The screen's agreement with that judged count over the feasible trials: Spearman's rank
correlation, and the false-dominance rate (of the ordered pairs of trials where (screen, KL)
says one dominates the other, the share where the judged refusal count of the dominating one is
higher). Writes ``bench/cost/trial-cost-MODEL.json`` (``-prune`` before ``.json`` under ``--screen
prune``); ``table`` prints it as markdown.

``margin`` chooses ``--screen-margin`` on a development model's ``run`` record: for each margin of a
fixed ladder, the rulings prune would make among its trials and how many the judged count says
are wrong; the smallest margin without a wrong one is chosen. Writes
``bench/cost/screen-margin-MODEL.json``; ``--show`` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fair_front import MODELS, SEARCH_TOKENS, WORK  # noqa: E402
from searches import BATCH, ROOT, cpu_model, ensure_model, prompt_files, revision, search_heretic  # noqa: E402

RECORD = ROOT / "bench" / "cost"
STUDY = "cost"


def run(args) -> None:
    import optuna
    import torch

    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    torch.set_num_threads(args.threads)
    model = MODELS[args.model]
    if args.model == "qwen2.5-coder-0.5b":
        ensure_model(model.folder)
    prompts = prompt_files(WORK)
    folder = WORK.parent / "cost" / args.model
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.db").unlink(missing_ok=True)
    url = f"sqlite:///{folder / 'study.db'}"
    config = StudyConfig(model=str(model.folder), dtype="bf16", n_trials=args.trials, seed=args.seed, max_new_tokens=SEARCH_TOKENS,
                         batch_size=BATCH, screen=args.screen,
                         harmful={p: str(prompts[f"harmful_{p}"]) for p in ("extraction", "evaluation", "confirmation")},
                         harmless={p: str(prompts[f"harmless_{p}"]) for p in ("extraction", "evaluation", "confirmation")})
    storage = open_storage(url)
    create_or_resume(storage, STUDY, config)
    started, cpu = time.time(), time.process_time()
    run_worker(url, STUDY, device="cpu")
    search = {"wall_seconds": time.time() - started, "cpu_seconds": time.process_time() - cpu}
    trials = [trial_row(t) for t in optuna.load_study(study_name=STUDY, storage=storage).trials if t.state.name in ("COMPLETE", "PRUNED")]
    floors = time_floors(url, trials, args.repeats)
    record = {"model": args.model, "screen": args.screen, "trials": trials, "floors": floors, "search": search, "threads": args.threads,
              "seed": args.seed, "batch_size": BATCH, "answer_tokens": SEARCH_TOKENS, "code": revision(ROOT),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
              "command": "python bench/trial_cost.py " + " ".join(sys.argv[1:])}
    if args.heretic_python:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the same threads for Heretic's child process
        raw, wall, cpu = search_heretic(folder / "heretic", args.heretic_trials, args.seed, prompts, model.folder,
                                        args.heretic_python, 0, system=model.system or "", new_tokens=SEARCH_TOKENS)
        record["heretic"] = {"trials": len(raw["trials"]), "wall_seconds": wall, "cpu_seconds": cpu,
                             "median_trial_seconds": statistics.median(t["seconds"] for t in raw["trials"])}
    RECORD.mkdir(parents=True, exist_ok=True)
    path = record_path(args.model, args.screen)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(f"wrote {path.relative_to(ROOT)}")


def trial_row(trial) -> dict:
    from abliterate.storage.records import TrialRecord

    record = TrialRecord.of(trial)
    complete = trial.state.name == "COMPLETE" and bool(record.feasible)
    return {"number": trial.number, "params": trial.params, "kl": record.kl, "feasible": record.feasible,
            "pruned": trial.state.name == "PRUNED", "refusal": trial.values[0] if complete else None, "screen": record.screen,
            "first_layer": min(record.edited_layers or (), default=None), "seconds": record.seconds, "decided_by": record.decided_by}


def time_floors(url: str, trials: list[dict], repeats: int) -> list[dict]:
    """Per feasible trial: the floor's two passes from the first edited layer up, and the KL pass
    in full (best of ``repeats`` each, seconds of wall and of CPU)."""
    from abliterate.ablation import Baker
    from abliterate.ablation.prefix import first_edited_layer
    from abliterate.objectives.kl import KLScorer
    from abliterate.objectives.refusal import MarkerProxy
    from abliterate.objectives.screen import RefusalScreen
    from abliterate.search.kit import StudyKit

    kit = StudyKit.open(url, STUDY, device="cpu")
    loaded, config = kit.model, kit.config
    harmful, harmless = kit.prompts["harmful", "evaluation"], kit.prompts["harmless", "evaluation"]
    kl = KLScorer(loaded.model, loaded.tokenizer, kit.chat.apply(loaded, harmless), batch_size=config.batch_size)
    screen = RefusalScreen(loaded, kit.chat.apply(loaded, harmful), max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    judged = MarkerProxy(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, chat=kit.chat)
    baker = Baker.for_model(loaded.model)
    floors = []
    for row in trials:
        if not row["feasible"]:
            continue
        with baker.baked_into(kit.edit(row["params"])) as report:
            first = first_edited_layer(report.layers, baker.num_layers)
            cached_kl, kl_time = best_of(repeats, partial(kl.score, first))
            _, screen_time = best_of(repeats, partial(screen.score, first))
            full_kl, full_time = best_of(repeats, partial(kl.score, 0))
            screen_value = screen.score(first).value
            refusal = judged.score(loaded, harmful).value
        assert cached_kl == full_kl, f"trial {row['number']}: the cached KL pass gave {cached_kl}, the full one {full_kl}"
        floors.append({"number": row["number"], "first_layer": first, "layers": baker.num_layers, "kl": kl_time,
                       "screen": screen_time, "kl_full": full_time, "screen_value": screen_value, "refusal": refusal,
                       "kl_value": full_kl})
    return floors


def best_of(repeats: int, measure) -> tuple[object, dict]:
    """``measure()``'s value and its fastest run's wall and CPU seconds."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = measure()
        runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    return value, min(runs, key=lambda r: r["wall"])


def agreement(floors: list[dict]) -> dict:
    """The screen against the whole judged refusal pass of the same feasible trials."""
    from scipy.stats import spearmanr

    claimed = false = 0
    for a in floors:
        for b in floors:
            if a is not b and a["screen_value"] <= b["screen_value"] and a["kl_value"] <= b["kl_value"] \
                    and (a["screen_value"], a["kl_value"]) != (b["screen_value"], b["kl_value"]):
                claimed += 1
                false += a["refusal"] > b["refusal"]
    rho = spearmanr([f["screen_value"] for f in floors], [f["refusal"] for f in floors]).statistic if len(floors) > 2 else None
    return {"trials": len(floors), "spearman": None if rho is None else float(rho), "dominance_claims": claimed,
            "false_dominance": false / claimed if claimed else None}


MARGINS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)  # shares of the ruling trial's screen


def margins(floors: list[dict]) -> dict:
    """For each screen margin of the ladder, the rulings ``--screen prune`` would make among the
    record's trials (search.front.screen_dominates: a trial rules out each one with no less KL and
    a screen higher by the margin, a share of its own) and how many are wrong by the judged count (the ruled-out trial
    refuses less). The chosen margin is the smallest with no wrong ruling."""
    from abliterate.search.front import screen_dominates

    rows = []
    for margin in MARGINS:
        rulings = [(a, b) for a in floors for b in floors if a is not b
                   and screen_dominates(a["kl_value"], a["screen_value"], b["kl_value"], b["screen_value"], margin)]
        rows.append({"margin": margin, "rulings": len(rulings), "wrong": sum(a["refusal"] > b["refusal"] for a, b in rulings),
                     "trials_ruled_out": len({b["number"] for _, b in rulings}),
                     "wrong_pairs": [[a["number"], b["number"]] for a, b in rulings if a["refusal"] > b["refusal"]]})
    chosen = next((r["margin"] for r in rows if not r["wrong"]), None)
    return {"trials": len(floors), "ladder": rows, "chosen": chosen}


def margin_table(record: dict) -> str:
    lines = [f"{record['model']}: the screen margin from {record['source']} ({record['trials']} trials, each judged "
             f"whole), {record['date']}, code {record['code']}", f"`{record['command']}`", "",
             "| margin (share of the ruling trial's screen) | rulings | wrong by the judged count | trials ruled out |", "|---|---|---|---|"]
    lines += [f"| {r['margin']:g} | {r['rulings']} | {r['wrong']} | {r['trials_ruled_out']} of {record['trials']} |"
              for r in record["ladder"]]
    lines += ["", f"Chosen: {record['chosen']:g}, the smallest margin with no wrong ruling." if record["chosen"] is not None
              else "No margin of the ladder is free of wrong rulings."]
    return "\n".join(lines)


def summary(record: dict) -> dict:
    trials, floors = record["trials"], record["floors"]
    feasible = {t["number"]: t for t in trials if t["feasible"]}
    floor_wall = [f["kl"]["wall"] + f["screen"]["wall"] for f in floors]
    floor_cpu = [f["kl"]["cpu"] + f["screen"]["cpu"] for f in floors]
    trial_wall = [feasible[f["number"]]["seconds"]["total"] for f in floors]
    trial_cpu = [feasible[f["number"]]["seconds"]["cpu"] for f in floors]
    figures = {
        "trials": len(trials), "feasible": len(feasible), "pruned": sum(t["pruned"] for t in trials),
        "median_trial_wall": statistics.median(trial_wall), "median_trial_cpu": statistics.median(trial_cpu),
        "median_floor_wall": statistics.median(floor_wall), "median_floor_cpu": statistics.median(floor_cpu),
        "median_trial_over_floor": statistics.median(t / f for t, f in zip(trial_wall, floor_wall)),
        "median_kl_cached": statistics.median(f["kl"]["wall"] for f in floors),
        "median_kl_full": statistics.median(f["kl_full"]["wall"] for f in floors),
        "median_first_layer": statistics.median(f["first_layer"] for f in floors), "layers": floors[0]["layers"],
        "search_cpu_per_trial": record["search"]["cpu_seconds"] / len(trials),
        "agreement": agreement(floors),
        "decided_by": dict(Counter(decider(t) for t in trials)),
    }
    steps = {}
    for t in feasible.values():
        for step, seconds in t["seconds"].items():
            steps.setdefault(step, []).append(seconds)
    figures["median_step_seconds"] = {step: statistics.median(values) for step, values in steps.items()}
    if "heretic" in record:
        heretic = record["heretic"]
        figures["heretic_cpu_per_trial"] = heretic["cpu_seconds"] / heretic["trials"]
        figures["ours_over_heretic_cpu"] = figures["search_cpu_per_trial"] / figures["heretic_cpu_per_trial"]
    return figures


def decider(trial: dict) -> str:
    """What settled a trial (storage.records.DECIDERS), read from its steps where the record predates the attr."""
    if trial.get("decided_by"):
        return trial["decided_by"]
    if not trial["feasible"]:
        return "kl"
    if trial["pruned"]:
        return "refusals-so-far" if "refusal" in trial["seconds"] else "screen"
    return "judged"


def table(record: dict) -> str:
    s = summary(record)
    steps = ", ".join(f"{k} {v:.2f}" for k, v in s["median_step_seconds"].items())
    lines = [
        f"{record['model']}, --screen {record.get('screen', 'record')}, {record['date']}, {record['machine']}, "
        f"{record['threads']} thread(s), code {record['code']}",
        f"`{record['command']}`", "",
        "| measure | ours | floor | Heretic 1.4.0 |", "|---|---|---|---|",
        f"| median wall s per trial (feasible) | {s['median_trial_wall']:.2f} | {s['median_floor_wall']:.2f} | "
        + (f"{record['heretic']['median_trial_seconds']:.2f} |" if "heretic" in record else "not run |"),
        f"| median CPU s per trial (feasible) | {s['median_trial_cpu']:.2f} | {s['median_floor_cpu']:.2f} | |",
        f"| whole search, CPU s per trial | {s['search_cpu_per_trial']:.2f} | | "
        + (f"{s['heretic_cpu_per_trial']:.2f} |" if "heretic" in record else "not run |"),
        "",
        f"- {s['trials']} trials, {s['feasible']} feasible, {s['pruned']} pruned; decided by "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["decided_by"].items())) + "; median trial over its floor: "
        f"{s['median_trial_over_floor']:.1f}x; median step seconds: {steps}.",
        f"- KL pass from the first edited layer (median layer {s['median_first_layer']:g} of {s['layers']}): "
        f"{s['median_kl_cached']:.3f} s against {s['median_kl_full']:.3f} s in full, the same value on every trial.",
    ]
    a = s["agreement"]
    if a["spearman"] is not None:
        false = "no claims" if a["false_dominance"] is None else f"{a['false_dominance']:.2f} of {a['dominance_claims']} claims"
        lines.append(f"- screen against a whole judged refusal pass of the {a['trials']} feasible trials: Spearman {a['spearman']:.2f}; "
                     f"false dominance {false}.")
    if "heretic" in record:
        lines.append(f"- ours over Heretic's CPU per trial (whole searches): {s['ours_over_heretic_cpu']:.3f}.")
    return "\n".join(lines)


def choose_margin(model: str, show: bool) -> None:
    """Write (or with ``show``, print) the screen margin's record of ``model``'s recorded run."""
    out = RECORD / f"screen-margin-{model}.json"
    if show:
        if not out.exists():
            raise SystemExit(f"no record at {out}; make it with: python bench/trial_cost.py margin --model {model}")
        print(margin_table(json.loads(out.read_text())))
        return
    source = record_path(model, "record")
    if not source.exists():
        raise SystemExit(f"no record at {source}; make it with: python bench/trial_cost.py run --model {model}")
    if model not in MODELS or MODELS[model].role != "development":
        raise SystemExit(f"{model} is not a development model; a margin is chosen on development models only")
    record = {"model": model, "source": str(source.relative_to(ROOT)), **margins(json.loads(source.read_text())["floors"]),
              "code": revision(ROOT), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "command": f"python bench/trial_cost.py margin --model {model}"}
    out.write_text(json.dumps(record, indent=1))
    print(margin_table(record))


def record_path(model: str, screen: str) -> Path:
    return RECORD / f"trial-cost-{model}{'' if screen == 'record' else '-' + screen}.json"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run")
    go.add_argument("--model", default="qwen2.5-coder-0.5b", choices=sorted(MODELS))
    go.add_argument("--trials", type=int, default=20)
    go.add_argument("--threads", type=int, default=1)
    go.add_argument("--seed", type=int, default=1)
    go.add_argument("--repeats", type=int, default=2, help="timings of each floor pass; the fastest is kept")
    go.add_argument("--screen", default="record", choices=("record", "prune"), help="the search's --screen")
    go.add_argument("--heretic-python")
    go.add_argument("--heretic-trials", type=int, default=6)
    show = commands.add_parser("table")
    show.add_argument("--model", default="qwen2.5-coder-0.5b")
    show.add_argument("--screen", default="record", choices=("record", "prune"))
    margin = commands.add_parser("margin", help="choose the screen margin on a --screen record run's judged trials")
    margin.add_argument("--model", default="qwen2.5-coder-0.5b")
    margin.add_argument("--show", action="store_true", help="print the kept record instead of writing it")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "margin":
        choose_margin(args.model, args.show)
    else:
        path = record_path(args.model, args.screen)
        if not path.exists():
            raise SystemExit(f"no record at {path}; make it with: python bench/trial_cost.py run --model {args.model} --screen {args.screen}")
        print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
