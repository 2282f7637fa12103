"""The ``abliterate`` command.

Every user error surfaces as one line ``error: ...`` on stderr and exit status 2; a database
that cannot be reached (or is lost mid-run) gives exit status 3, which the launcher treats as
worth retrying after a pause.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ablation.directions import METHODS
from ablation.errors import AblationError
from objectives.gate import RULES, TESTS
from objectives.refusal import PROXIES
from search.launcher import DATABASE_UNREACHABLE
from storage.errors import DatabaseUnreachable, StorageError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except DatabaseUnreachable as error:
        print(f"error: {error}", file=sys.stderr)
        return DATABASE_UNREACHABLE
    except (AblationError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


BATCH_HELP = "prompts per forward pass and answers decoded at once (default 64; lower it if memory runs out)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="abliterate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="list every residual writer the model has, per layer")
    _model_options(inspect)
    inspect.set_defaults(run=_inspect)

    directions = commands.add_parser("directions", help="capture residuals and compute refusal directions")
    _model_options(directions)
    directions.add_argument("--harmful", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--harmless", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--method", choices=METHODS, default="mean")
    directions.add_argument("--out", required=True, help="safetensors file for residual means and directions")
    directions.add_argument("--batch-size", type=_positive, default=16)
    directions.add_argument("--samples", action="store_true", help="also store every prompt's residuals")
    directions.set_defaults(run=_directions)

    evaluate = commands.add_parser("evaluate", help="score an edited model against its base: KL, refusals, samples")
    _model_options(evaluate)
    evaluate.add_argument("--base", required=True, help="the unedited model (hub id, folder or .gguf)")
    evaluate.add_argument("--harmful", default="demo-harmful", help="prompt source spec (default: demo-harmful)")
    evaluate.add_argument("--harmless", default="demo-harmless", help="prompt source spec (default: demo-harmless)")
    evaluate.add_argument("--edgy", default=None, help="benign-but-edgy prompt source for an over-refusal rate")
    evaluate.add_argument("--proxy", choices=PROXIES, default="markers")
    evaluate.add_argument("--max-new-tokens", type=_positive, default=48)
    evaluate.add_argument("--judge", default=None, help="module:attribute of a refusal judge (markers proxy)")
    evaluate.add_argument("--agent-template", default=None, help="text file with {task} (agent proxy)")
    evaluate.add_argument("--batch-size", type=_positive, default=64, help=BATCH_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)

    search = commands.add_parser("search", help="the main job: create or resume a study and run local workers")
    _model_options(search)
    search.add_argument("--storage", default=None, help="sqlite:///FILE.db (default sqlite:///abliterate.db) or postgresql+psycopg2://...")
    search.add_argument("--study", default="abliterate", help="study name")
    search.add_argument("--trials", type=_positive, default=100, help="finished trials to reach, counted across all workers")
    search.add_argument("--workers", type=int, default=1, help="local worker processes")
    search.add_argument("--devices", default=None, help="comma-separated devices, one worker each (e.g. cuda:0,cuda:1)")
    search.add_argument("--harmful", required=True, help="prompt source spec, cut into extraction/evaluation/confirmation")
    search.add_argument("--harmless", required=True, help="prompt source spec, cut the same way")
    search.add_argument("--split", default="64,100,100", help="prompts for extraction,evaluation,confirmation")
    search.add_argument("--kl-cap", type=float, default=1.0)
    search.add_argument("--proxy", choices=PROXIES, default="markers")
    search.add_argument("--max-new-tokens", type=_positive, default=48)
    search.add_argument("--batch-size", type=_positive, default=64, help=BATCH_HELP)
    search.add_argument("--sampler", default="tpe", help="tpe (multivariate), nsga2, gp or random")
    search.add_argument("--seed", type=int, default=None)
    _heartbeat_options(search)
    search.set_defaults(run=_search)

    worker = commands.add_parser("worker", help="join a study from any machine")
    _study_options(worker)
    worker.add_argument("--device", default="auto")
    worker.add_argument("--model", default=None, help="only to check it matches the study")
    worker.add_argument("--threads", type=_positive, default=None, help="CPU threads for torch (default: torch's choice)")
    _heartbeat_options(worker)
    worker.set_defaults(run=_worker)

    launch = commands.add_parser("launch", help="one worker process per device, restarted if it dies")
    _study_options(launch)
    launch.add_argument("--devices", required=True, help="e.g. 0,1,2,3 or cuda:0,cuda:1")
    _heartbeat_options(launch)
    launch.set_defaults(run=_launch)

    front = commands.add_parser("front", help="the feasible Pareto front as a table")
    _study_options(front)
    front.add_argument("--json", action="store_true")
    front.set_defaults(run=_front)

    export = commands.add_parser("export", help="re-bake a trial from its params and cached directions and write the checkpoint")
    _study_options(export)
    export.add_argument("--trial", type=int, required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--device", default="auto")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(run=_export)

    promote = commands.add_parser("promote", help="confirm, export and agent-sweep front candidates; gate them against the base model")
    _study_options(promote)
    promote.add_argument("--runner", choices=("local", "command", "harbor"), default="local")
    promote.add_argument("--attempts", type=_positive, default=5, help="attempts per task and arm")
    promote.add_argument("--once", action="store_true", help="promote what the front holds now, then exit")
    promote.add_argument("--tasks", default=None, help="local: a folder of task .yaml files (default: the shipped suite); "
                         "command / harbor: a file with one task name per line")
    promote.add_argument("--command", default=None, help="command runner: template with {model} {task} {attempt} {log_dir} {endpoint}")
    promote.add_argument("--serve", default=None, help="harbor: model server template with {model} {name} {port} (default: vllm serve)")
    promote.add_argument("--dataset", default="terminal-bench@2.0", help="harbor dataset")
    promote.add_argument("--agent", default="terminus-2", help="harbor agent")
    promote.add_argument("--port", type=_positive, default=8000, help="harbor: the model server's port")
    promote.add_argument("--concurrency", type=_positive, default=4, help="harbor: trials run at once")
    promote.add_argument("--jobs-dir", default="harbor-jobs", help="harbor: where job folders go")
    promote.add_argument("--temperature", type=float, default=0.8, help="local: sampling temperature")
    promote.add_argument("--margin", type=float, default=0.1, help="confirmation: refusal must beat the base model's by this much")
    promote.add_argument("--confirm-tokens", type=_positive, default=None, help="confirmation answer length (default: twice the study's)")
    promote.add_argument("--rule", choices=RULES, default="any", help="any (raw p, the default criterion), holm, bh or cmh (pooled)")
    promote.add_argument("--test", choices=TESTS, default="fisher", help="per-task exact test")
    promote.add_argument("--alpha", type=float, default=0.10)
    promote.add_argument("--min-attempts", type=_positive, default=3, help="valid attempts per arm for a task to count")
    promote.add_argument("--stop-at-first-lift", action="store_true", help="an accepted candidate stops the study and the promoter")
    promote.add_argument("--checkpoints", default="abliterate-checkpoints", help="folder for exported checkpoints and sweep logs")
    promote.add_argument("--device", default="auto")
    promote.add_argument("--lease", type=float, default=600.0, help="seconds a crashed promoter's claim lasts")
    promote.add_argument("--poll", type=float, default=30.0, help="seconds between looks at the front")
    promote.set_defaults(run=_promote)

    report = commands.add_parser("report", help="promoted candidates: per-task counts, p-values, pooled test, decision")
    _study_options(report)
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_report)

    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on the study storage")
    dashboard.add_argument("--storage", default=None)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=_positive, default=8080)
    dashboard.set_defaults(run=_dashboard)

    demo = commands.add_parser("demo", help="the main job on the embedded default: a short study on the shipped refusing model")
    demo.add_argument("--storage", default=None, help="default sqlite:///abliterate-demo.db in this folder")
    demo.add_argument("--trials", type=_positive, default=40)
    demo.add_argument("--workers", type=_positive, default=2)
    demo.add_argument("--no-promote", action="store_true", help="stop after the search, without the promotion step")
    _heartbeat_options(demo)
    demo.set_defaults(run=_demo)
    return parser


def _positive(text: str) -> int:
    """argparse type for counts, sizes and seconds: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None, help="sqlite:///FILE.db (default sqlite:///abliterate.db) or postgresql+psycopg2://...")
    parser.add_argument("--study", default="abliterate")


def _heartbeat_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat", type=_positive, default=60, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=_positive, default=600, help="seconds without a heartbeat before a trial counts as crashed")


def _heartbeat_args(args) -> list[str]:
    return ["--heartbeat", str(args.heartbeat), "--grace", str(args.grace)]


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id, local folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--device-map", default=None, help="e.g. auto: spread one model over several GPUs")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-thinking", action="store_true", help="turn thinking off in the chat template (Qwen3/3.5)")


def _load(args):
    from ablation.loading import load_model

    return load_model(args.model, args.dtype, args.device, args.device_map, args.trust_remote_code)


def _inspect(args) -> int:
    from ablation.architectures import find_writers

    loaded = _load(args)
    print_writers(find_writers(loaded.model), title=f"residual writers of {args.model}")
    return 0


def console():
    """A rich console; piped output keeps one line per row so it can be grepped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 240)


def print_writers(writers, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("layer", "group", "module", "shape", "residual axis", "bias", "post-norm"):
        table.add_column(column, overflow="fold")
    for w in writers:
        table.add_row(
            str(w.layer), w.group, w.name, "x".join(map(str, w.weight.shape)), str(w.residual_axis),
            "yes" if w.bias is not None else "", "yes" if w.post_norm_scale is not None else "",
        )
    out = console()
    out.print(table)
    groups = Counter(w.group for w in writers)
    experts = sum(w.experts or 0 for w in writers)
    layers = len({w.layer for w in writers})
    summary = ", ".join(f"{group} {count}" for group, count in sorted(groups.items()))
    out.print(f"{layers} layers, {len(writers)} writers ({summary}), {experts} routed experts")


def _directions(args) -> int:
    from ablation.directions import by_method
    from ablation.residuals import capture_last_token, save_residuals
    from objectives.prompts import load_prompts

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    loaded = _load(args)
    thinking = False if args.no_thinking else None
    captured = {
        name: capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(prompts, enable_thinking=thinking), args.batch_size, progress=name)
        for name, prompts in (("harmful", harmful), ("harmless", harmless))
    }
    found, accuracy = by_method(args.method, captured["harmful"], captured["harmless"])
    if accuracy is not None:
        print("probe cross-validated accuracy per layer: " + " ".join(f"{a:.2f}" for a in accuracy.tolist()))
    save_residuals(args.out, captured["harmful"], captured["harmless"], found,
                   metadata={"model": args.model, "method": args.method}, samples=args.samples)
    print(f"wrote {args.out}: {found.shape[0]} layer directions ({args.method}) from "
          f"{len(harmful)} harmful and {len(harmless)} harmless prompts")
    return 0


def _evaluate(args) -> int:
    import json

    from rich.markup import escape

    from ablation.loading import load_model
    from objectives.evaluate import evaluate
    from objectives.prompts import load_prompts
    from objectives.refusal import ChatFormat, make_proxy

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    edgy = load_prompts(args.edgy) if args.edgy else None
    chat = ChatFormat(enable_thinking=False if args.no_thinking else None)
    proxy = make_proxy(args.proxy, args.max_new_tokens, args.batch_size, chat, args.judge, args.agent_template)

    def loader(spec):
        return lambda: load_model(spec, args.dtype, args.device, args.device_map, args.trust_remote_code)

    result = evaluate(loader(args.base), loader(args.model), harmful, harmless, proxy, chat, edgy, args.batch_size)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    out = console()
    refusal, base = result.refusal, result.base_refusal
    out.print(f"KL (harmless, first token): {result.kl:.4f} over {len(harmless)} prompts")
    out.print(f"{proxy.name} proxy on {len(harmful)} harmful prompts: {refusal.value:.3f} (base {base.value:.3f})")
    if refusal.counts:
        out.print(f"  refusal rate {refusal.rate('refusal'):.3f} (base {base.rate('refusal'):.3f}), "
                  f"degenerate rate {refusal.rate('degenerate'):.3f}, counts {refusal.counts}")
    if result.over_refusal:
        out.print(f"over-refusal on {result.over_refusal.total} edgy prompts: {result.over_refusal.rate('refusal'):.3f}")
    for prompt, response in refusal.samples:
        out.print(f"[bold]> {escape(prompt)}[/]\n  {escape(response.strip()[:300])}", highlight=False)
    return 0


def _search(args) -> int:
    from search.study import StudyConfig

    try:
        sizes = tuple(int(n) for n in args.split.split(","))
        assert len(sizes) == 3 and min(sizes) > 0
    except (ValueError, AssertionError):
        raise AblationError(f"--split wants three positive counts like 64,100,100, got {args.split!r}") from None
    config = StudyConfig.split(args.model, args.harmful, args.harmless, sizes, dtype=args.dtype, n_trials=args.trials,
                               kl_cap=args.kl_cap, proxy=args.proxy, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, sampler=args.sampler, seed=args.seed,
                               enable_thinking=False if args.no_thinking else None)
    devices = args.devices.split(",") if args.devices else [args.device] * args.workers
    return _run_study(args.storage, args.study, config, devices, _heartbeat_args(args))


def _run_study(storage: str | None, name: str, config, devices: list[str], extra: list[str]) -> int:
    """Create or resume ``name`` and run local workers until it has ``config.n_trials`` finished trials."""
    from search.launcher import supervise
    from search.study import create_or_resume
    from search.worker import finished
    from storage.rdb import open_storage
    from storage.urls import normalize_url

    config.prompts()  # bad or overlapping prompt sets fail here, before any worker starts
    storage_url = normalize_url(storage)
    study, resumed = create_or_resume(open_storage(storage_url), name, config)
    out = console()
    out.print(f"{'resumed' if resumed else 'created'} study {name!r} in {storage_url}: {finished(study)}/{config.n_trials} finished")

    last = ""

    def progress():
        nonlocal last
        try:
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
        except SQLAlchemyError:
            line = "  database unreachable; workers will be restarted and their trials retried"
            if line != last:
                out.print(line, highlight=False)
                last = line
            return
        line = (f"  finished {states.count('COMPLETE')}/{config.n_trials}, running {states.count('RUNNING')}, "
                f"failed {states.count('FAIL')}")
        if line != last:
            out.print(line, highlight=False)
            last = line

    cpu_workers = sum(d == "cpu" or (d == "auto" and not _has_gpu()) for d in devices)
    if cpu_workers:
        # Workers sharing the CPU each get their share of the cores: oversubscribed torch
        # threads wait on each other and made generation several times slower, not faster.
        extra = [*extra, "--threads", str(max(1, (os.cpu_count() or 1) // cpu_workers))]
    status = (supervise(storage_url, name, devices, tick=progress, poll=5.0, extra=extra)
              if finished(study) < config.n_trials else 0)
    _print_front(study, out)
    out.print(f"browse it: abliterate dashboard --storage {storage_url}")
    return status


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _worker(args) -> int:
    from search.study import check_local, load
    from search.worker import run_worker
    from storage.rdb import open_storage

    if args.model:
        check_local(load(open_storage(args.storage), args.study)[1], model=args.model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run_worker(args.storage, args.study, args.device, args.heartbeat, args.grace)
    except OperationalError as error:
        first = str(error.orig or error).strip().splitlines()[0]
        print(f"error: lost the database connection ({first}); restart the worker, its trial will be retried", file=sys.stderr)
        return DATABASE_UNREACHABLE
    return 0


def _launch(args) -> int:
    from search.launcher import supervise
    from storage.urls import normalize_url

    devices = [d if not d.isdigit() else f"cuda:{d}" for d in args.devices.split(",")]
    return supervise(normalize_url(args.storage), args.study, devices, extra=_heartbeat_args(args))


def _front(args) -> int:
    import json

    from search.front import feasible_front
    from search.study import load
    from storage.rdb import open_storage

    study, _ = load(open_storage(args.storage), args.study)
    if args.json:
        print(json.dumps([{"trial": t.number, "refusal": t.values[0], "kl": t.values[1], "params": t.params,
                           **{k: t.user_attrs.get(k) for k in ("refusal_rate", "degenerate_rate")}}
                          for t in feasible_front(study)], indent=2))
        return 0
    _print_front(study, console())
    return 0


def _print_front(study, out) -> None:
    from rich.table import Table

    from search.front import feasible_front

    table = Table(title=f"feasible Pareto front of {study.study_name!r}")
    for column in ("trial", "refusal", "KL", "refusal rate", "degenerate", "method", "scope"):
        table.add_column(column)
    for t in feasible_front(study):
        table.add_row(str(t.number), f"{t.values[0]:.3f}", f"{t.values[1]:.4f}", f"{t.user_attrs.get('refusal_rate', 0):.2f}",
                      f"{t.user_attrs.get('degenerate_rate', 0):.2f}", t.params.get("method", ""), t.params.get("scope", ""))
    out.print(table)


def _export(args) -> int:
    from ablation import Baker, export_checkpoint, find_writers, load_model
    from search.space import candidate_from_params
    from search.study import load
    from search.trial import direction_for, directions_from_bytes, directions_key
    from storage.cache import ArtifactCache
    from storage.rdb import open_storage

    storage = open_storage(args.storage)
    study, config = load(storage, args.study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if args.trial not in trials or trials[args.trial].state.name != "COMPLETE":
        raise AblationError(f"study {args.study!r} has no finished trial {args.trial}; see abliterate front")
    payload = ArtifactCache(storage.engine, args.study, "export").get(directions_key(config.space.methods))
    if payload is None:
        raise AblationError(f"study {args.study!r} has no cached directions yet; run a worker first")
    directions = directions_from_bytes(payload)
    loaded = load_model(config.model, config.dtype, args.device)
    candidate = candidate_from_params(trials[args.trial].params, next(iter(directions.values())).shape[0])
    Baker(find_writers(loaded.model)).bake(direction_for(candidate, directions), candidate.profile, candidate.norm_preserving)
    out = export_checkpoint(loaded, args.out, overwrite=args.overwrite)
    print(f"wrote trial {args.trial} of {args.study!r} to {out}")
    return 0


def _make_runner(args):
    from pathlib import Path

    from objectives.sweep.command import CommandRunner
    from objectives.sweep.harbor import DEFAULT_SERVE, HarborRunner
    from objectives.sweep.local import LocalRunner

    if args.runner == "local":
        return LocalRunner(args.tasks, args.temperature, args.device)
    if not args.tasks:
        raise AblationError(f"--runner {args.runner} needs --tasks FILE with one task name per line")
    try:
        tasks = [line.strip() for line in Path(args.tasks).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise AblationError(f"cannot read the task list {args.tasks}: {error.strerror}") from None
    if args.runner == "command":
        if not args.command:
            raise AblationError("--runner command needs --command TEMPLATE, e.g. --command 'my-runner {model} {task} {attempt}'")
        return CommandRunner(args.command, tasks)
    return HarborRunner(tasks, args.dataset, args.agent, args.serve or DEFAULT_SERVE, args.port, args.concurrency,
                        jobs_dir=args.jobs_dir)


def _promote(args) -> int:
    from objectives.gate import GateRule
    from search.promoter import Promoter, PromotionSettings
    from storage.rdb import open_storage

    try:
        rule = GateRule(args.rule, args.alpha, args.min_attempts, args.test)
    except ValueError as error:
        raise AblationError(str(error)) from None
    settings = PromotionSettings(args.attempts, args.margin, args.confirm_tokens, rule, args.stop_at_first_lift,
                                 lease_seconds=args.lease, checkpoints=args.checkpoints, device=args.device)
    promoter = Promoter(open_storage(args.storage), args.study, _make_runner(args), settings)
    if args.once:
        promoter.run_once()
    else:
        promoter.watch(args.poll)
    return 0


def _report(args) -> int:
    import json

    from search.promoter import report
    from storage.rdb import open_storage

    rows = report(open_storage(args.storage), args.study)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    _print_report(rows, args.study, console(), details=True)
    return 0


def _print_report(rows: list[dict], study: str, out, details: bool) -> None:
    from rich.table import Table

    summary = Table(title=f"promotions of {study!r}")
    for column in ("trial", "status", "confirmation", "decision", "best p", "best p (Holm)", "pooled p"):
        summary.add_column(column, overflow="fold")
    for row in rows:
        c, g = row.get("confirmation") or {}, row.get("gate") or {}
        tasks = g.get("tasks", [])
        summary.add_row(str(row["trial"]), row["status"],
                        f"{c['refusal']:.3f} vs base {c['base_refusal']:.3f}" if c else "",
                        g.get("reason", row.get("error", "")),
                        f"{min((t['p'] for t in tasks), default=1):.3g}" if tasks else "",
                        f"{min((t['p_holm'] for t in tasks), default=1):.3g}" if tasks else "",
                        f"{g['pooled_p']:.3g}" if g else "")
    out.print(summary)
    for row in rows if details else []:
        g = row.get("gate")
        if not g:
            continue
        table = Table(title=f"trial {row['trial']}: {row['status']} (rule {g['rule']['rule']}, {g['rule']['test']}, alpha {g['rule']['alpha']})")
        for column in ("task", "candidate", "baseline", "p", "p (Holm)", "p (BH)"):
            table.add_column(column, overflow="fold")
        for t in g["tasks"]:
            c = t["counts"]
            table.add_row(c["task"], f"{c['candidate_pass']}/{c['candidate_n']}", f"{c['baseline_pass']}/{c['baseline_n']}",
                          f"{t['p']:.3g}", f"{t['p_holm']:.3g}", f"{t['p_bh']:.3g}")
        out.print(table)
        ratio = "n/a" if g["pooled_odds_ratio"] is None else f"{g['pooled_odds_ratio']:.3g}"
        out.print(f"pooled CMH p {g['pooled_p']:.3g}, odds ratio {ratio}")
        for flag in g["flags"]:
            out.print(f"  note: {flag}", highlight=False)


def _dashboard(args) -> int:
    from optuna_dashboard import run_server

    from storage.rdb import open_storage

    storage = open_storage(args.storage)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    run_server(storage, host=args.host, port=args.port)
    return 0


def _demo(args) -> int:
    from objectives.sweep.local import LocalRunner
    from search.demo import DEMO_CHECKPOINTS, DEMO_STORAGE, DEMO_STUDY, demo_config
    from search.promoter import Promoter, PromotionSettings, report
    from storage.rdb import open_storage
    from storage.urls import normalize_url

    storage = args.storage or DEMO_STORAGE
    status = _run_study(storage, DEMO_STUDY, demo_config(args.trials), ["cpu"] * args.workers, _heartbeat_args(args))
    if status != 0 or args.no_promote:
        return status
    out = console()
    out.print("promoting the front: confirmation, checkpoint, the local agent suite against the base model, Fisher gate")
    promoter = Promoter(open_storage(storage), DEMO_STUDY, LocalRunner(device="cpu"),
                        PromotionSettings(attempts=5, checkpoints=DEMO_CHECKPOINTS, device="cpu"))
    promoter.run_once()
    _print_report(report(open_storage(storage), DEMO_STUDY), DEMO_STUDY, out, details=False)
    out.print(f"per-task tables: abliterate report --storage {storage} --study {DEMO_STUDY}")
    out.print(f"browse it: abliterate dashboard --storage {normalize_url(storage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
