"""``demo``: the main job on the embedded default, a short study and its promotion."""

from __future__ import annotations

from abliterate.search.cli.common import add_command, console, heartbeat_options, positive


def register(commands) -> None:
    demo = add_command(commands, "demo", "the main job on the embedded default: a short study on the shipped refusing model")
    demo.add_argument("--storage", default=None, help="default sqlite:///abliterate-demo.db in this folder")
    demo.add_argument("--trials", type=positive, default=40)
    demo.add_argument("--workers", type=positive, default=2)
    demo.add_argument("--no-promote", action="store_true", help="stop after the search, without the promotion step")
    heartbeat_options(demo)
    demo.set_defaults(run=_demo)


def _demo(args) -> int:
    from abliterate.search.cli.views import print_front, print_report
    from abliterate.search.demo import DEMO_AGENT_STUDY, DEMO_STORAGE, DEMO_STUDY, containers_unavailable, promote_demo, run_container_demo, run_demo
    from abliterate.search.promoter import report
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.urls import normalize_url, redacted

    storage = args.storage or DEMO_STORAGE
    out = console()
    status, study = run_demo(storage, args.trials, args.workers, args.heartbeat, args.grace,
                             say=lambda line: out.print(line, highlight=False, markup=False))
    print_front(study, out)
    if status != 0 or args.no_promote:
        out.print(f"browse it: abliterate dashboard --storage {redacted(normalize_url(storage))}")
        return status
    out.print("promoting the front: confirmation, checkpoint, the local agent suite against the base model, Fisher gate")
    promote_demo(storage)
    print_report(report(open_storage(storage), DEMO_STUDY), DEMO_STUDY, out, details=False)
    out.print(f"per-task tables: abliterate report --storage {redacted(normalize_url(storage))} --study {DEMO_STUDY}")
    problem = containers_unavailable()
    if problem:
        out.print(f"the container sweep is skipped: {problem}", highlight=False, markup=False)
    else:
        out.print("the whole path in Docker containers: a study on the agent refuser, its front served as the agent of "
                  "the shipped terminal tasks against the base model, Fisher gate")
        run_container_demo(storage, say=lambda line: out.print(line, highlight=False, markup=False))
        print_report(report(open_storage(storage), DEMO_AGENT_STUDY), DEMO_AGENT_STUDY, out, details=False)
    out.print(f"browse it: abliterate dashboard --storage {redacted(normalize_url(storage))}")
    return 0
