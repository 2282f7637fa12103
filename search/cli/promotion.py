"""Commands on promotion: ``promote`` and ``report``."""

from __future__ import annotations

from abliterate.search.cli.common import add_command, console, gate_options, gate_rule, not_negative, port, positive, real, study_options

# Literals, not imported from search.promotion_settings: --help must not import the gate's scipy
# (tests/test_cli.py checks that they agree).
MIN_LEASE_SECONDS, MAX_SECONDS = 1.0, 7 * 86400


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
    promote.add_argument("--port", type=port, default=8000, help="harbor: the model server's port")
    promote.add_argument("--concurrency", type=positive, default=4, help="harbor: trials run at once")
    promote.add_argument("--jobs-dir", default="harbor-jobs", help="harbor: where job folders go")
    promote.add_argument("--temperature", type=real(above=0), default=0.8, help="local: sampling temperature")
    promote.add_argument("--margin", type=real(least=0, most=1), default=0.1,
                         help="confirmation: refusal must beat the base model's by this much (a share of prompts, 0 to 1)")
    promote.add_argument("--confirm-tokens", type=positive, default=None, help="confirmation answer length (default: twice the study's)")
    gate_options(promote)
    promote.add_argument("--stop-at-first-lift", action="store_true", help="an accepted candidate stops the study and the promoter")
    # Literal 10, not imported from search.promoter (DEFAULT_CONTROLS): --help must not import it.
    promote.add_argument("--controls", type=not_negative, default=10, metavar="N",
                         help="specificity controls in each candidate's confirmation (as abliterate controls): N random "
                              "directions baked with its profile, and its direction learned on half the extraction prompts; "
                              "a candidate whose refusal drop the random band matches is dropped as not specific "
                              "(0: none run, earlier controls still read)")
    promote.add_argument("--include-not-specific", action="store_true",
                         help="also promote candidates the controls found not specific (dropped or skipped by default; "
                              "a later run with it takes the ones dropped for that alone)")
    promote.add_argument("--checkpoints", default="abliterate-checkpoints", help="folder for exported checkpoints and sweep logs")
    promote.add_argument("--device", default="auto")
    promote.add_argument("--lease", type=real(least=MIN_LEASE_SECONDS, most=MAX_SECONDS), default=600.0,
                         help=f"seconds a crashed promoter's claim lasts ({MIN_LEASE_SECONDS:g} to a week: a live one renews it every third)")
    promote.add_argument("--poll", type=real(above=0, most=MAX_SECONDS), default=30.0, help="seconds between looks at the front")
    promote.set_defaults(run=_promote)

    planner = add_command(commands, "plan", "what a promotion design can show: false acceptance, power, smallest N",
                          "For a design (tasks, attempts per task and arm, gate rule and test, candidates), print the "
                          "share of no-better candidates accepted (per candidate and over all candidates sharing one "
                          "baseline), the power to find a given lift, the smallest N with 80 % power, and whether any "
                          "outcome can pass at all. Exact for the rules any, holm and study; simulated for bh and cmh "
                          "(with the standard error).")
    planner.add_argument("--tasks", type=positive, default=5, help="tasks in the sweep")
    planner.add_argument("--attempts", type=positive, default=3, help="attempts per task and arm")
    gate_options(planner)
    planner.add_argument("--lift", type=real(least=0, most=1), default=0.3,
                         help="pass-rate lift the candidate should be found with (base rate + lift at most 1)")
    planner.add_argument("--on", choices=("one", "all"), default="one", help="the lift is on one task or on every task")
    planner.add_argument("--base-rate", type=real(least=0, most=1), default=0.4, help="the baseline's pass rate on every task")
    planner.add_argument("--studies", type=positive, default=20000,
                         help="simulated studies where a figure is simulated (at most 1,000,000)")
    planner.add_argument("--json", action="store_true", help="one JSON object with every figure")
    planner.set_defaults(run=_plan)

    report = add_command(commands, "report", "promoted candidates: per-task counts, p-values, pooled test, decision")
    study_options(report)
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_report)


def _make_runner(args):
    from pathlib import Path

    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.sweep.command import CommandRunner
    from abliterate.objectives.sweep.harbor import DEFAULT_SERVE, HarborRunner
    from abliterate.objectives.sweep.local import LocalRunner

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
    from abliterate.ablation.errors import AblationError
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.storage.rdb import open_storage

    rule = gate_rule(args)
    try:
        settings = PromotionSettings(args.attempts, args.margin, args.confirm_tokens, rule, args.stop_at_first_lift,
                                     lease_seconds=args.lease, checkpoints=args.checkpoints, device=args.device,
                                     include_not_specific=args.include_not_specific, controls=args.controls)
    except ValueError as error:  # the options' types check the same first, naming the option
        raise AblationError(str(error)) from None
    promoter = Promoter(open_storage(args.storage, create=False), args.study, _make_runner(args), settings)
    if args.once:
        promoter.run_once()
    else:
        promoter.watch(args.poll)
    if promoter.without_verdict:  # a run that decided nothing on them has not done its work
        numbers = ", ".join(map(str, sorted(promoter.without_verdict)))
        raise AblationError(f"trial(s) {numbers} got no verdict: their sweeps gave no task enough valid attempts (see the "
                            "lines above); fix the runner and run promote again, which retries their invalid attempts")
    return 0


def _plan(args) -> int:
    import json

    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.plan import Design, plan, plan_problem, summary

    rule = gate_rule(args)
    if args.base_rate + args.lift > 1 + 1e-12:  # not clipped to a smaller lift than the one asked for
        raise AblationError(f"--base-rate {args.base_rate:g} plus --lift {args.lift:g} is a pass rate above 1; "
                            f"lower --lift to {1 - args.base_rate:g} or less")
    design = Design(rule, args.tasks, args.attempts, args.base_rate, args.lift, args.on)
    problem = plan_problem(design, args.candidates, args.studies)
    if problem:
        raise AblationError(problem)
    figures = plan(design, args.candidates, args.studies)
    print(json.dumps(figures, indent=2) if args.json else summary(figures))
    return 0


def _report(args) -> int:
    import json

    from abliterate.search.promoter import report
    from abliterate.storage.rdb import open_storage

    rows = report(open_storage(args.storage, create=False), args.study)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print_report(rows, args.study, console(), details=True)
    return 0


def print_report(rows: list[dict], study: str, out, details: bool) -> None:
    out.print(summary_table(rows, study))
    for row in rows:  # decisions are prose: below the table, where a long one wraps as a paragraph
        for line in (specificity_prose(row), (row.get("gate") or {}).get("reason", row.get("error", ""))):
            if line:
                out.print(f"  trial {row['trial']}: {line}", highlight=False)
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


def summary_table(rows: list[dict], study: str):
    """One row per promoted trial, fitting 80 columns; the decisions follow the table."""
    from rich import box
    from rich.table import Table

    # Collapsed padding, no edge: nine columns in 80 (the specificity column came last).
    summary = Table(title=f"promotions of {study!r}", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
                    title_justify="left")
    # "look": which candidate of the study this decision is (its task tests so far in brackets);
    # "specific": the specificity controls' verdict, its spreads in the prose below the table
    for column in ("trial", "status", "refusal", "base", "best p", "Holm p", "pooled p", "look", "specific"):
        summary.add_column(column, no_wrap=True, justify="left" if column in ("status", "specific") else "right")
    for row in rows:
        c, g = row.get("confirmation") or {}, row.get("gate") or {}
        tasks = g.get("tasks", [])
        summary.add_row(str(row["trial"]), row["status"], f"{c['refusal']:.3f}" if c else "", f"{c['base_refusal']:.3f}" if c else "",
                        f"{min(t['p'] for t in tasks):.3g}" if tasks else "",
                        f"{min(t['p_holm'] for t in tasks):.3g}" if tasks else "",
                        f"{g['pooled_p']:.3g}" if g else "", f"{g.get('look', 1)} ({g.get('tested', len(tasks))})" if g else "",
                        specific_cell(row))
    return summary


def _controls(row: dict) -> dict | None:
    """A report row's specificity controls: its confirmation's, or a skipped trial's own."""
    c = row.get("confirmation") or {}
    return row.get("controls") or c.get("controls") or ({"specific": c["specific"]} if "specific" in c else None)


def specific_cell(row: dict) -> str:
    """``yes`` / ``no`` / ``not run`` (a confirmation that ran no controls), or blank (no confirmation)."""
    controls = _controls(row)
    if not controls and not row.get("confirmation"):
        return ""
    verdict = (controls or {}).get("specific")
    return "not run" if verdict is None else "yes" if verdict else "no"


def specificity_prose(row: dict) -> str:
    """The controls' finding on a report row in words (see search.analysis), when there is one."""
    from abliterate.search.analysis import specificity_line, specificity_words
    from abliterate.storage.records import Status

    if row["status"] == Status.SKIPPED:
        return f"{specificity_words(_controls(row))} (abliterate controls); skipped, --include-not-specific promotes it"
    return specificity_line(row.get("confirmation") or {}) or ""


def _task_table(trial: int, status: str, g: dict):
    from rich import box
    from rich.table import Table

    table = Table(title=f"trial {trial}: {status} (rule {g['rule']['rule']}, {g['rule']['test']}, alpha {g['rule']['alpha']})",
                  box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for column in ("task", "candidate", "baseline", "p", "p (Holm)", "p (BH)"):
        table.add_column(column, overflow="fold", justify="left" if column == "task" else "right")
    for t in g["tasks"]:
        c = t["counts"]
        table.add_row(c["task"], f"{c['candidate_pass']}/{c['candidate_n']}", f"{c['baseline_pass']}/{c['baseline_n']}",
                      f"{t['p']:.3g}", f"{t['p_holm']:.3g}", f"{t['p_bh']:.3g}")
    return table
