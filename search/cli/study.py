"""Commands that run a study: ``search``, ``worker``, ``launch``."""

from __future__ import annotations

import argparse
import sys

from abliterate.search.cli.common import add_command, console, heartbeat_args, heartbeat_options, positive, study_options
from abliterate.search.settings import add_flags


def register(commands) -> None:
    search = add_command(commands, "search", "the main job: create or resume a study and run local workers")
    search.add_argument("--config", default=None, metavar="STUDY.toml",
                        help="a study file holding any of these settings (and a [space] table); flags override it, and "
                             "so do the ABLITERATE_* variables of deployment settings (those marked 'or $ABLITERATE_...')")
    add_flags(search)
    search.set_defaults(run=_search)

    worker = add_command(commands, "worker", "join a study from any machine")
    study_options(worker)
    worker.add_argument("--device", default="auto")
    worker.add_argument("--model", default=None, help="only to check it matches the study")
    worker.add_argument("--threads", type=positive, default=None, help="CPU threads for torch (default: torch's choice)")
    worker.add_argument("--judge-device", default=None, help="device of the study's separate judge model, if it has one (default: --device)")
    worker.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)  # started by a launcher, which reports
    heartbeat_options(worker, study=False)
    worker.set_defaults(run=_worker)

    launch = add_command(commands, "launch", "a worker process per device listed (twice: two), each restarted if it dies")
    study_options(launch)
    launch.add_argument("--devices", required=True, help="e.g. 0,1,2,3 or cuda:0,cuda:1")
    heartbeat_options(launch, study=False)
    launch.set_defaults(run=_launch)


def _search(args) -> int:
    from abliterate.search.cli.settings import resolve
    from abliterate.search.cli.views import print_front
    from abliterate.search.run import run_study
    from abliterate.storage.rdb import check_storage
    from abliterate.storage.urls import redacted

    resolved = resolve(args)
    settings = resolved.settings
    storage_url = check_storage(settings.storage)  # a typo in the URL is told at once, before torch and the prompt sources are loaded
    extra = ["--judge-device", settings.judge_device] if settings.judge_device else []
    out = console()
    status, study = run_study(storage_url, settings.study, settings.study_config(resolved.space_ranges), settings.local_devices(),
                              extra, warm_start=settings.warm_start, origins=resolved.origins(),
                              say=lambda line: out.print(line, highlight=False, markup=False))
    print_front(study, out)
    out.print(f"browse it: abliterate dashboard --storage {redacted(storage_url)}")
    return status


def _worker(args) -> int:
    from sqlalchemy.exc import OperationalError

    from abliterate.search.interrupts import interrupted_once
    from abliterate.search.launcher import DATABASE_UNREACHABLE
    from abliterate.search.study import check_heartbeat, check_local, load
    from abliterate.storage.rdb import open_storage

    if args.heartbeat and args.grace:
        check_heartbeat(args.heartbeat, args.grace)
    # A missing database or study is refused before torch is imported (seconds on a busy machine).
    config = load(open_storage(args.storage, create=False), args.study)[1]
    check_local(config, model=args.model, heartbeat_interval=args.heartbeat, grace_period=args.grace)
    from abliterate.search.worker import run_worker

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with interrupted_once():  # SIGTERM too: the trial is queued again, a direction claim given back
            run_worker(args.storage, args.study, args.device, judge_device=args.judge_device)
    except KeyboardInterrupt:
        if not args.supervised:
            raise
        return 130  # the launcher says it once for all its workers
    except OperationalError as error:
        from abliterate.storage.urls import normalize_url, redacted

        first = redacted(normalize_url(args.storage), str(error.orig or error).strip().splitlines()[0])
        print(f"error: lost the database connection ({first}); restart the worker, its trial will be retried", file=sys.stderr)
        return DATABASE_UNREACHABLE
    return 0


def _launch(args) -> int:
    from abliterate.search.launcher import supervise
    from abliterate.search.study import check_heartbeat
    from abliterate.storage.urls import normalize_url

    if args.heartbeat and args.grace:
        check_heartbeat(args.heartbeat, args.grace)
    devices = [d if not d.isdigit() else f"cuda:{d}" for d in args.devices.split(",")]
    return supervise(normalize_url(args.storage), args.study, devices, extra=heartbeat_args(args))
