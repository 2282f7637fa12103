"""Commands on promotion: ``promote`` and ``report``."""

from __future__ import annotations

from abliterate.search.cli.common import add_command, console, gate_options, gate_rule, not_negative, port, positive, real, study_options
from abliterate.search.cli.views import print_report

# Literals, not imported from search.promotion_settings: --help must not import the gate's scipy
# (tests/test_cli.py checks that they agree).
MIN_LEASE_SECONDS, MAX_SECONDS = 1.0, 7 * 86400


def register(commands) -> None:
    promote = add_command(commands, "promote", "confirm, export and agent-sweep front candidates; gate them against the base model")
    study_options(promote)
    promote.add_argument("--runner", choices=("local", "command", "harbor", "containers"), default="local",
                         help="containers: terminal tasks run in Docker containers, the candidate served as their agent")
    promote.add_argument("--attempts", type=positive, default=5, help="attempts per task and arm")
    promote.add_argument("--once", action="store_true", help="promote what the front holds now, then exit")
    promote.add_argument("--tasks", default=None, help="local: a folder of task .yaml files (default: the shipped suite); "
                         "containers: a folder of terminal-bench 2 task folders, or one (default: the shipped suite); "
                         "command / harbor: a file with one task name per line")
    promote.add_argument("--turns", type=positive, default=8, help="containers: the agent's replies per attempt at most")
    promote.add_argument("--command", default=None, help="command runner: template with {model} {task} {attempt} {log_dir} {endpoint}")
    promote.add_argument("--serve", default=None, help="harbor: model server template with {model} {name} {port} (default: vllm serve)")
    promote.add_argument("--dataset", default="terminal-bench@2.0", help="harbor dataset")
    promote.add_argument("--agent", default="terminus-2", help="harbor agent")
    promote.add_argument("--port", type=port, default=8000, help="harbor: the model server's port")
    promote.add_argument("--concurrency", type=positive, default=4, help="harbor: trials run at once")
    promote.add_argument("--jobs-dir", default="harbor-jobs", help="harbor: where job folders go")
    promote.add_argument("--harbor", default="harbor", help="harbor: the harbor command (tools/harbor runs Harbor in a "
                         "container, for hosts without Python >= 3.12)")
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
    if args.runner == "containers":
        from abliterate.objectives.sweep.container import ChatAgent, ContainerRunner
        from abliterate.objectives.sweep.serve import TransformersServer
        from abliterate.objectives.sweep.task_folder import load_tasks, shipped_tasks

        tasks = load_tasks(Path(args.tasks)) if args.tasks else shipped_tasks()
        return ContainerRunner(tasks, ChatAgent(server=TransformersServer(device=args.device), turns=args.turns))
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
                        harbor=args.harbor, jobs_dir=args.jobs_dir)


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
