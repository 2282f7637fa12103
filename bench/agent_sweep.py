"""A checkpoint as a terminal agent on the shipped container tasks: pass rates and time per attempt.

    python bench/agent_sweep.py run --model DIR --label base [--attempts 3] [--turns 4] [--max-tokens 128]
    python bench/agent_sweep.py report [--candidate LABEL] [--base base]
    python bench/agent_sweep.py path [--trials 8] [--attempts 3]
    python bench/agent_sweep.py harbor
    python bench/agent_sweep.py show          (path.json and harbor.json as tables; bench/agent/summary.md)

``run`` serves ``--model`` with ``transformers serve`` on the CPU and sweeps every shipped task
(objectives/sweep/terminal) ``--attempts`` times in fresh Docker containers, the model acting as
the agent (objectives/sweep/container.py, greedy replies). Attempts are stored as they finish in
bench/out/agent/sweeps.db, so a run that stops resumes with what is missing. It writes
bench/agent/<label>.json: per task the passes, valid attempts and seconds per attempt, with the
date, machine, command and code revision. ``report`` prints base and candidate side by side per
task with the promotion gate's decision (Fisher's exact test, one-sided, rule ``any`` at alpha
0.10, the promoter's defaults) and writes bench/agent/report-<candidate>.md.

``path`` is the product's whole path on the shipped agent refuser (objectives/refuser/agent_model):
a study of ``--trials`` trials on the demo's settings, its front confirmed, exported, each
checkpoint served as the agent of a container sweep against the base model's, and the gate; it
writes bench/agent/path.json (per candidate the gate's counts and p-values, seconds per attempt).

``harbor`` runs the shipped tasks through Harbor itself (0.26, in a container: tools/harbor) with
Harbor's oracle agent (the reference solutions) and its nop agent, read by the harbor runner the
promoter uses, and writes bench/agent/harbor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from searches import children_cpu, revision  # noqa: E402 - the benches' one way to count CPU and name the code

WORK, RECORD = ROOT / "bench" / "out" / "agent", ROOT / "bench" / "agent"


def run(args) -> None:
    from abliterate.objectives.sweep.base import run_sweep
    from abliterate.objectives.sweep.container import ChatAgent, ContainerRunner
    from abliterate.objectives.sweep.serve import TransformersServer
    from abliterate.objectives.sweep.task_folder import shipped_tasks
    from abliterate.storage.promotions import SweepStore
    from abliterate.storage.rdb import open_storage

    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"no model folder at {args.model}; give a checkpoint folder (config.json, weights, tokenizer)")
    WORK.mkdir(parents=True, exist_ok=True)
    agent = ChatAgent(server=TransformersServer(device="cpu", dtype=args.dtype), turns=args.turns, max_tokens=args.max_tokens)
    runner = ContainerRunner(shipped_tasks(), agent)
    runner.check()  # an engine and the base image, before anything is started or stored
    store = SweepStore(open_storage(f"sqlite:///{WORK / 'sweeps.db'}").engine, f"{args.label}:{runner.fingerprint()}")
    start, cpu = time.time(), children_cpu()
    counts = run_sweep(runner, str(Path(args.model).resolve()), args.attempts, store, WORK / args.label, log=print)
    seconds = _seconds_per_task(store)
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / f"{args.label}.json").write_text(json.dumps({
        "label": args.label, "model": str(args.model), "date": time.strftime("%Y-%m-%d"), "machine": _machine(),
        "command": " ".join(["python", "bench/agent_sweep.py", *sys.argv[1:]]), "code": revision(ROOT),
        "settings": runner.settings(), "attempts": args.attempts, "max_tokens": args.max_tokens, "dtype": args.dtype,
        "wall_seconds_this_call": time.time() - start, "server_cpu_seconds_this_call": children_cpu() - cpu,
        "tasks": {task: {"passes": passes, "valid": valid, "seconds": seconds.get(task, [])}
                  for task, (passes, valid) in counts.items()}}, indent=1))
    print(json.dumps({task: f"{p}/{n}" for task, (p, n) in counts.items()}))


def path(args) -> None:
    import dataclasses

    from sqlalchemy import text

    from abliterate.objectives.refuser import agent_refuser_path
    from abliterate.objectives.sweep.container import ChatAgent, ContainerRunner
    from abliterate.objectives.sweep.serve import TransformersServer
    from abliterate.objectives.sweep.task_folder import shipped_tasks
    from abliterate.search.demo import demo_config
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.search.study import create_or_resume
    from abliterate.search.worker import run_worker
    from abliterate.storage.rdb import open_storage

    work = WORK / "path"
    shutil.rmtree(work, ignore_errors=True)  # one run, start to end: the record describes it whole
    work.mkdir(parents=True)
    url, start = f"sqlite:///{work / 'study.db'}", time.time()
    create_or_resume(open_storage(url), "agent", dataclasses.replace(demo_config(args.trials), model=str(agent_refuser_path())))
    run_worker(url, "agent", "cpu", log=print)
    searched = time.time() - start
    runner = ContainerRunner(shipped_tasks(), ChatAgent(server=TransformersServer(device="cpu"), turns=2, max_tokens=60))
    settings = PromotionSettings(attempts=args.attempts, controls=0, checkpoints=str(work / "checkpoints"), device="cpu")
    promoter = Promoter(open_storage(url), "agent", runner, settings, log=print)
    promoter.run_once()
    with promoter.storage.engine.connect() as connection:
        rows = connection.execute(text("select sweep, seconds from abl_sweep_attempt where status != 'invalid'")).all()
    per_attempt = sorted(seconds for _, seconds in rows)
    tags = {t.name: list(t.tags) for t in shipped_tasks()}
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / "path.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": _machine(), "code": revision(ROOT),
        "command": " ".join(["python", "bench/agent_sweep.py", *sys.argv[1:]]), "trials": args.trials,
        "attempts": args.attempts, "turns": 2, "tags": tags, "search_seconds": round(searched, 1),
        "wall_seconds": round(time.time() - start, 1), "attempts_run": len(per_attempt),
        "median_seconds_per_attempt": per_attempt[len(per_attempt) // 2] if per_attempt else None,
        "promotions": {str(n): {"status": str(p.status), "gate": p.details.get("gate")}
                       for n, p in promoter.promotions.all().items()}}, indent=1))
    print(f"wrote {RECORD / 'path.json'}")


def harbor(args) -> None:
    from abliterate.objectives.refuser import refuser_path
    from abliterate.objectives.sweep.harbor import HarborRunner
    from abliterate.objectives.sweep.serve import free_port
    from abliterate.objectives.sweep.task_folder import shipped_tasks

    subprocess.run(["bash", str(ROOT / "tools" / "harbor_image.sh")], check=True)
    work = WORK / "harbor"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    folder = ROOT / "objectives" / "sweep" / "terminal"
    os.environ["ABLITERATE_HARBOR_MOUNTS"] = f"{work}:{folder}"
    names = [t.name for t in shipped_tasks()]
    serve = f"{Path(sys.executable).parent / 'transformers'} serve --host 127.0.0.1 --port {{port}} --device cpu {{model}}"
    outcome = {}
    for agent in ("oracle", "nop"):
        runner = HarborRunner(names, dataset=str(folder), agent=agent, serve=serve, port=free_port(), concurrency=2,
                              harbor=str(ROOT / "tools" / "harbor"), jobs_dir=work / "jobs", max_retries=0)
        attempts, start = [], time.time()
        runner.run(str(refuser_path()), [(name, 0) for name in names], attempts.append, work / agent)
        outcome[agent] = {"wall_seconds": round(time.time() - start, 1),
                          "tasks": {a.task: {"status": a.status, "seconds": round(a.seconds, 1), "why": a.detail} for a in attempts}}
        print(agent, {a.task: a.status for a in attempts}, flush=True)
    version = subprocess.run([str(ROOT / "tools" / "harbor"), "--version"], capture_output=True, text=True).stdout.strip()
    RECORD.mkdir(parents=True, exist_ok=True)
    (RECORD / "harbor.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": _machine(), "code": revision(ROOT), "harbor": version,
        "command": " ".join(["python", "bench/agent_sweep.py", *sys.argv[1:]]), "agents": outcome}, indent=1))
    print(f"wrote {RECORD / 'harbor.json'}")


def show(args) -> None:
    lines = []
    if (RECORD / "path.json").exists():
        record = json.loads((RECORD / "path.json").read_text())
        lines += [f"Whole path on the agent refuser ({record['date']}, {record['machine']}, code {record['code']}): "
                  f"{record['trials']} trials, {record['attempts']} attempts per task and arm, {record['turns']} turns; "
                  f"{record['attempts_run']} attempts, median {record['median_seconds_per_attempt']:.1f} s each; "
                  f"search {record['search_seconds']:.0f} s, all {record['wall_seconds']:.0f} s.", ""]
        for number, promotion in record["promotions"].items():
            gate = promotion["gate"]
            lines.append(f"trial {number}: {promotion['status']}" + (f" ({gate['reason']})" if gate else ""))
            if gate:
                lines += ["", "| task | kind | base | candidate | p (Fisher, one-sided) |", "|---|---|---|---|---|"]
                for row in gate["tasks"]:
                    c = row["counts"]
                    lines.append(f"| {c['task']} | {', '.join(record['tags'][c['task']])} | {c['baseline_pass']}/{c['baseline_n']} | "
                                 f"{c['candidate_pass']}/{c['candidate_n']} | {row['p']:.3f} |")
                lines.append("")
    if (RECORD / "harbor.json").exists():
        record = json.loads((RECORD / "harbor.json").read_text())
        lines += ["", f"Harbor {record['harbor']} itself on the shipped tasks ({record['date']}, code {record['code']}):", "",
                  "| agent | passed | failed | invalid | wall s |", "|---|---|---|---|---|"]
        for agent, outcome in record["agents"].items():
            statuses = [t["status"] for t in outcome["tasks"].values()]
            lines.append(f"| {agent} | {statuses.count('pass')} | {statuses.count('fail')} | {statuses.count('invalid')} | "
                         f"{outcome['wall_seconds']:.0f} |")
    text = "\n".join(lines)
    print(text)
    (RECORD / "summary.md").write_text(text + "\n")


def _seconds_per_task(store) -> dict[str, list[float]]:
    from sqlalchemy import text

    with store.engine.connect() as connection:
        rows = connection.execute(text("select task, seconds from abl_sweep_attempt where sweep = :s and status != 'invalid' "
                                       "order by task, attempt"), {"s": store.sweep}).all()
    out: dict[str, list[float]] = {}
    for task, seconds in rows:
        out.setdefault(task, []).append(round(seconds, 1))
    return out


def report(args) -> None:
    from abliterate.objectives.gate import GateRule, TaskCounts, gate

    base, candidate = (json.loads((RECORD / f"{label}.json").read_text()) for label in (args.base, args.candidate))
    tags = {t.name: t.tags for t in _tasks()}
    counts = [TaskCounts(task, c["passes"], c["valid"], base["tasks"][task]["passes"], base["tasks"][task]["valid"])
              for task, c in candidate["tasks"].items()]
    result = gate(counts, GateRule())
    per_task = {t["counts"]["task"]: t for t in result.as_dict()["tasks"]}
    lines = [f"Agent sweep on the shipped container tasks: {args.candidate} against {args.base} "
             f"({candidate['attempts']} attempts per task, {candidate['settings']['turns']} turns, greedy; "
             f"{candidate['date']}, {candidate['machine']})", "",
             "| task | kind | base | candidate | p (Fisher, one-sided) | base s/attempt | candidate s/attempt | base ran a command | candidate ran a command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in counts:
        b_s, c_s = (_median(r["tasks"][c.task]["seconds"]) for r in (base, candidate))
        lines.append(f"| {c.task} | {', '.join(tags.get(c.task, ()))} | {c.baseline_pass}/{c.baseline_n} | "
                     f"{c.candidate_pass}/{c.candidate_n} | {per_task[c.task]['p']:.3f} | {b_s:.1f} | {c_s:.1f} | "
                     f"{_acted(args.base, c.task)} | {_acted(args.candidate, c.task)} |")
    medians = {label: _median([s for t in r["tasks"].values() for s in t["seconds"]]) for label, r in ((args.base, base), (args.candidate, candidate))}
    lines += ["", "Median seconds per attempt: " + ", ".join(f"{label} {value:.1f}" for label, value in medians.items()),
              f"Gate (rule any, alpha 0.10): {'accepted' if result.accepted else 'no lift'}: {result.reason}"]
    text = "\n".join(lines)
    print(text)
    (RECORD / f"report-{args.candidate}.md").write_text(text + "\n")


def _acted(label: str, task: str) -> str:
    """Of the attempts whose transcript is kept (bench/out/agent/LABEL), those in which the agent
    ran at least one command: a model that declines runs none."""
    kept = [f for f in (WORK / label).glob("*.json") if re.fullmatch(rf"{re.escape(task)}-\d+\.json", f.name)]
    if not kept:
        return "-"
    ran = sum(any("command" in turn for turn in json.loads(f.read_text())["turns"]) for f in kept)
    return f"{ran}/{len(kept)}"


def _tasks():
    from abliterate.objectives.sweep.task_folder import shipped_tasks

    return shipped_tasks()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_ = commands.add_parser("run")
    run_.add_argument("--model", required=True)
    run_.add_argument("--label", required=True)
    run_.add_argument("--attempts", type=int, default=3)
    run_.add_argument("--turns", type=int, default=4)
    run_.add_argument("--max-tokens", type=int, default=128)
    run_.add_argument("--dtype", default="float32", help="the server's dtype (float32: CPUs without bf16 run bf16 slowly)")
    path_ = commands.add_parser("path")
    path_.add_argument("--trials", type=int, default=8)
    path_.add_argument("--attempts", type=int, default=3)
    commands.add_parser("harbor")
    commands.add_parser("show")
    report_ = commands.add_parser("report")
    report_.add_argument("--base", default="base")
    report_.add_argument("--candidate", required=True)
    args = parser.parse_args()
    from abliterate.ablation.errors import AblationError

    try:
        {"run": run, "report": report, "path": path, "harbor": harbor, "show": show}[args.command](args)
    except FileNotFoundError as error:
        raise SystemExit(f"no record {error.filename}; write it with: python bench/agent_sweep.py run --label ...") from None
    except AblationError as error:  # the project's one-line errors (no engine, no base image, a bad task folder)
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
