"""Commands on promotion: ``promote`` and ``report``."""

from __future__ import annotations

from search.cli.common import RULES, TESTS, add_command, console, positive, study_options


def register(commands) -> None:
    promote = add_command(commands, "promote", "confirm, export and agent-sweep front candidates; gate them against the base model")
    study_options(promote)
    promote.add_argument("--runner", choices=("local", "command", "harbor"), default="local")
    promote.add_argument("--attempts", type=positive, default=5, help="attempts per task and arm")
    promote.add_argument("--once", action="store_true", help="promote what the front holds now, then exit")
    promote.add_argument("--tasks", default=None, help="local: a folder of task .yaml files (default: the shipped suite); "
                         "command / harbor: a file with one task name per line")
    promote.add_argument("--command", default=None, help="command runner: template with {model} {task} {attempt} {log_dir} {endpoint}")
    promote.add_argument("--serve", default=None, help="harbor: model server template with {model} {name} {port} (default: vllm serve)")
    promote.add_argument("--dataset", default="terminal-bench@2.0", help="harbor dataset")
    promote.add_argument("--agent", default="terminus-2", help="harbor agent")
    promote.add_argument("--port", type=positive, default=8000, help="harbor: the model server's port")
    promote.add_argument("--concurrency", type=positive, default=4, help="harbor: trials run at once")
    promote.add_argument("--jobs-dir", default="harbor-jobs", help="harbor: where job folders go")
    promote.add_argument("--temperature", type=float, default=0.8, help="local: sampling temperature")
    promote.add_argument("--margin", type=float, default=0.1, help="confirmation: refusal must beat the base model's by this much")
    promote.add_argument("--confirm-tokens", type=positive, default=None, help="confirmation answer length (default: twice the study's)")
    promote.add_argument("--rule", choices=RULES, default="any", help="any (raw p, the default criterion), holm, bh or cmh (pooled)")
    promote.add_argument("--test", choices=TESTS, default="fisher", help="per-task exact test")
    promote.add_argument("--alpha", type=float, default=0.10)
    promote.add_argument("--min-attempts", type=positive, default=3, help="valid attempts per arm for a task to count")
    promote.add_argument("--stop-at-first-lift", action="store_true", help="an accepted candidate stops the study and the promoter")
    promote.add_argument("--checkpoints", default="abliterate-checkpoints", help="folder for exported checkpoints and sweep logs")
    promote.add_argument("--device", default="auto")
    promote.add_argument("--lease", type=float, default=600.0, help="seconds a crashed promoter's claim lasts")
    promote.add_argument("--poll", type=float, default=30.0, help="seconds between looks at the front")
    promote.set_defaults(run=_promote)

    report = add_command(commands, "report", "promoted candidates: per-task counts, p-values, pooled test, decision")
    study_options(report)
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_report)


def _make_runner(args):
    from pathlib import Path

    from ablation.errors import AblationError
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
    from ablation.errors import AblationError
    from objectives.gate import GateRule
    from search.promoter import Promoter, PromotionSettings
    from storage.rdb import open_storage

    try:
        rule = GateRule(args.rule, args.alpha, args.min_attempts, args.test)
    except ValueError as error:
        raise AblationError(str(error)) from None
    settings = PromotionSettings(args.attempts, args.margin, args.confirm_tokens, rule, args.stop_at_first_lift,
                                 lease_seconds=args.lease, checkpoints=args.checkpoints, device=args.device)
    promoter = Promoter(open_storage(args.storage, create=False), args.study, _make_runner(args), settings)
    if args.once:
        promoter.run_once()
    else:
        promoter.watch(args.poll)
    return 0


def _report(args) -> int:
    import json

    from search.promoter import report
    from storage.rdb import open_storage

    rows = report(open_storage(args.storage, create=False), args.study)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print_report(rows, args.study, console(), details=True)
    return 0


def print_report(rows: list[dict], study: str, out, details: bool) -> None:
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
        table = _task_table(row["trial"], row["status"], g)
        out.print(table)
        ratio = "n/a" if g["pooled_odds_ratio"] is None else f"{g['pooled_odds_ratio']:.3g}"
        out.print(f"pooled CMH p {g['pooled_p']:.3g}, odds ratio {ratio}")
        for flag in g["flags"]:
            out.print(f"  note: {flag}", highlight=False)


def _task_table(trial: int, status: str, g: dict):
    from rich.table import Table

    table = Table(title=f"trial {trial}: {status} (rule {g['rule']['rule']}, {g['rule']['test']}, alpha {g['rule']['alpha']})")
    for column in ("task", "candidate", "baseline", "p", "p (Holm)", "p (BH)"):
        table.add_column(column, overflow="fold")
    for t in g["tasks"]:
        c = t["counts"]
        table.add_row(c["task"], f"{c['candidate_pass']}/{c['candidate_n']}", f"{c['baseline_pass']}/{c['baseline_n']}",
                      f"{t['p']:.3g}", f"{t['p_holm']:.3g}", f"{t['p_bh']:.3g}")
    return table
