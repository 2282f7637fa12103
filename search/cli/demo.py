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
    from dataclasses import replace

    from abliterate.objectives.sweep.local import LocalRunner
    from abliterate.search.cli.promotion import print_report
    from abliterate.search.cli.study import run_study
    from abliterate.search.demo import DEMO_CHECKPOINTS, DEMO_MARGIN, DEMO_STORAGE, DEMO_STUDY, demo_config
    from abliterate.search.promoter import Promoter, PromotionSettings, report
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.urls import normalize_url, redacted

    storage = args.storage or DEMO_STORAGE
    config = replace(demo_config(args.trials), heartbeat_interval=args.heartbeat, grace_period=args.grace)
    status = run_study(storage, DEMO_STUDY, config, ["cpu"] * args.workers, [], closing=False)
    if status != 0 or args.no_promote:
        console().print(f"browse it: abliterate dashboard --storage {redacted(normalize_url(storage))}")
        return status
    out = console()
    out.print("promoting the front: confirmation, checkpoint, the local agent suite against the base model, Fisher gate")
    promoter = Promoter(open_storage(storage), DEMO_STUDY, LocalRunner(device="cpu"),
                        PromotionSettings(attempts=5, margin=DEMO_MARGIN, checkpoints=DEMO_CHECKPOINTS, device="cpu"))
    promoter.run_once()
    print_report(report(open_storage(storage), DEMO_STUDY), DEMO_STUDY, out, details=False)
    out.print(f"per-task tables: abliterate report --storage {redacted(normalize_url(storage))} --study {DEMO_STUDY}")
    out.print(f"browse it: abliterate dashboard --storage {redacted(normalize_url(storage))}")
    return 0
