"""Commands that run a study: ``search``, ``worker``, ``launch``."""

from __future__ import annotations

import argparse
import os
import sys

from abliterate.search.cli.common import (
    BATCH_HELP,
    PROXIES,
    STORAGE_HELP,
    add_command,
    console,
    heartbeat_args,
    heartbeat_options,
    judge_options,
    model_options,
    not_negative,
    positive,
    study_name,
    study_options,
)


def register(commands) -> None:
    search = add_command(commands, "search", "the main job: create or resume a study and run local workers")
    search.add_argument("--config", default=None, metavar="STUDY.toml",
                        help="a study file holding any of these settings (and a [space] table); flags override it, "
                             "ABLITERATE_* environment variables sit between them")
    model_options(search, required=False)
    search.add_argument("--storage", default=None, help=STORAGE_HELP)
    search.add_argument("--study", type=study_name, default="abliterate", help="study name")
    search.add_argument("--trials", type=positive, default=100, help="finished trials to reach, counted across all workers")
    search.add_argument("--workers", type=not_negative, default=1, help="local worker processes (0: create or extend the study only)")
    search.add_argument("--devices", default=None, help="comma-separated devices, one worker each (e.g. cuda:0,cuda:1)")
    # Literal names, not imported from objectives.prompts: --help must not read the prompt module.
    search.add_argument("--harmful", default="advbench",
                        help="prompt source spec (a file, a shipped preset, pkg: or hf:), cut into extraction/evaluation/confirmation")
    search.add_argument("--harmless", default="benign", help="prompt source spec, cut the same way")
    search.add_argument("--split", default="64,100,100", help="prompts for extraction,evaluation,confirmation")
    search.add_argument("--kl-cap", type=float, default=1.0, help="trials with a larger KL are infeasible (their refusal pass is skipped)")
    search.add_argument("--proxy", choices=PROXIES, default="markers", help="refusal measure")
    search.add_argument("--max-new-tokens", type=positive, default=48, help="answer length of the refusal pass")
    judge_options(search, default_model="the base model itself, after each trial's edit is undone")
    search.add_argument("--batch-size", type=positive, default=64, help=BATCH_HELP)
    search.add_argument("--space", default="default", choices=("default", "ablate", "heads", "wide"),
                        help="search space preset: default (twelve parameters: the direction removed from every writer or only "
                             "from the attention heads that carry refusal), ablate or heads (one of the two), wide (seventeen: "
                             "also methods, layer range, kernel shapes, norm-preserving)")
    search.add_argument("--methods", default=None,
                        help="direction methods the trials choose from, comma-separated: mean, mean-projected, pca, probe, cone, sae "
                             "(default: the --space preset's)")
    search.add_argument("--interventions", default=None,
                        help="what trials do with the direction, comma-separated: ablate, amplify (also amplify the "
                             "compliance direction), heads (only the attention heads that carry refusal) (default: the --space preset's)")
    search.add_argument("--calibrated", action="store_true",
                        help="calibrated profiles: each layer's weight scaled by its refusal strength on the harmful prompts, "
                             "the target percentile (25, 75, 95) searched beside 0 (uncalibrated, where the designed first "
                             "trials start), the factor held in [0.5, 2]")
    search.add_argument("--sae", default=None, metavar="DIR",
                        help="a folder of per-layer sparse autoencoders (W_enc, b_enc, W_dec, b_dec; layer_N.safetensors) "
                             "for --methods sae: the span of the top features' decoder rows is removed, their number searched")
    search.add_argument("--harmful-categories", default=None, metavar="COLUMN",
                        help="a column of the harmful source (FILE.csv#PROMPT, .jsonl, .json) holding each prompt's category: "
                             "the cone takes one direction per category instead of k-means clusters")
    search.add_argument("--starting-points", type=int, default=5, help="designed first trials (0 to 6) before the sampler's own")
    search.add_argument("--sampler", default="tpe", help="tpe (multivariate), nsga2, gp or random")
    search.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")
    search.add_argument("--objectives", default="refusal,kl", choices=("refusal,kl", "refusal,kl,over-refusal"),
                        help="what trials minimise; over-refusal is the refusal rate on --edgy prompts")
    search.add_argument("--edgy", default=None,
                        help="benign-but-edgy prompt source of the over-refusal objective (e.g. rho-edgy; not a part of --harmless)")
    search.add_argument("--warm-start", default=None, metavar="STORAGE_URL#STUDY",
                        help="first enqueue that study's feasible front (positions are fractions of depth; directions are not carried)")
    heartbeat_options(search)
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
    from abliterate.search.cli import settings
    from abliterate.storage.rdb import check_storage

    args = settings.resolve(_search_parser(), args, args.argv[1:])
    check_storage(args.storage)  # a typo in the URL is told at once, before torch and the prompt sources are loaded
    devices = args.devices.split(",") if args.devices else [args.device] * args.workers
    extra = ["--judge-device", args.judge_device] if args.judge_device else []
    return run_study(args.storage, args.study, search_config(args), devices, extra, warm_start=args.warm_start)


def _search_parser():
    from abliterate.search.cli import parser

    top = parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["search"]


def search_config(args):
    """The ``StudyConfig`` that ``abliterate search``'s arguments describe."""
    from dataclasses import replace
    from pathlib import Path

    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.prompts import absolute_spec
    from abliterate.search.space import PRESETS
    from abliterate.search.study import StudyConfig

    if not args.model:
        raise AblationError("abliterate search needs a model: --model MODEL, or model = ... in the --config study file")
    try:
        sizes = tuple(int(n) for n in args.split.split(","))
        assert len(sizes) == 3 and min(sizes) > 0
    except (ValueError, AssertionError):
        raise AblationError(f"--split wants three positive counts like 64,100,100, got {args.split!r}") from None
    # Local paths are stored absolute: a worker or promoter started in another folder reads the same files.
    model = str(Path(args.model).expanduser().resolve()) if Path(args.model).expanduser().exists() else args.model
    space = PRESETS[args.space]
    ranges = getattr(args, "space_ranges", {}) or {}
    if ranges:
        from dataclasses import fields

        known = {f.name for f in fields(space)} - {"methods", "interventions"}
        unknown = sorted(set(ranges) - known)
        if unknown:
            raise AblationError(f"the study file's [space] has no setting {unknown[0]!r}; it takes preset, methods, "
                                f"interventions and {', '.join(sorted(known))}")
        for key, value in ranges.items():
            default = getattr(space, key)
            is_range = len(default) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default)
            if not isinstance(value, list) or (is_range and not (len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                                                                 and value[0] <= value[1])):
                want = "[low, high]" if is_range else "a list of choices"
                raise AblationError(f"the study file's [space] {key} must be {want}, like {list(default)}; got {value!r}")
        space = replace(space, **{key: tuple(value) for key, value in ranges.items()})
    chosen = {name: tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
              for name, value in (("methods", args.methods), ("interventions", args.interventions)) if value is not None}
    if args.calibrated:
        # 0 first: the designed trials keep the kernels' weights and the sampler weighs calibration
        # against them; without it every trial is calibrated (at 10 trials it cost 1.7x the KL at
        # Heretic's refusal count while reaching 0/40 held-out; bench/RESULTS.md)
        chosen["calibration"] = (0, 25, 75, 95)
    space = replace(space, **chosen) if chosen else space
    return StudyConfig.split(model, absolute_spec(args.harmful), absolute_spec(args.harmless), sizes, dtype=args.dtype,
                             n_trials=args.trials, kl_cap=args.kl_cap, proxy=args.proxy, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, sampler=args.sampler, seed=args.seed, space=space,
                             starting_points=args.starting_points,
                             enable_thinking=False if args.no_thinking else None,
                             trust_remote_code=args.trust_remote_code, device_map=args.device_map,
                             judge=args.judge, judge_model=args.judge_model, judge_prefilter=args.judge_prefilter,
                             harmful_categories=args.harmful_categories,
                             sae=str(Path(args.sae).expanduser().resolve()) if args.sae else None,
                             objectives=args.objectives, edgy=absolute_spec(args.edgy) if args.edgy else None,
                             heartbeat_interval=args.heartbeat, grace_period=args.grace)


def run_study(storage: str | None, name: str, config, devices: list[str], extra: list[str], closing: bool = True,
              warm_start: str | None = None) -> int:
    """Create or resume ``name`` and run local workers until it has ``config.n_trials`` finished trials.

    ``warm_start`` (``STORAGE_URL#STUDY``): that study's feasible front is enqueued first (see
    search.warm). Ends with the front and, when ``closing``, the command that opens the dashboard (the demo
    prints it once, after its promotions)."""
    import optuna

    from abliterate.ablation.locate import local_model
    from abliterate.search.launcher import supervise
    from abliterate.search.study import create_or_resume
    from abliterate.storage.errors import DatabaseUnreachable
    from abliterate.storage.rdb import check_storage, open_storage
    from abliterate.storage.urls import normalize_url, redacted

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "new study created" line repeats ours
    storage_url = check_storage(storage)  # before the model checks, which take a minute on a large model
    # Everything a worker would trip over is checked before the study is written: a study stored
    # with a bad model would then refuse the right one ("exists with other settings").
    config.prompts()  # bad or overlapping prompt sets
    config.categories()  # a category column that is not there
    if config.sae:
        from abliterate.ablation.sae import load_saes

        load_saes(config.sae, None)  # no SAE files, or damaged ones (their fit to the model is checked by the worker)
    local_model(config.model)  # a wrong path is refused before torch and transformers are imported (seconds)
    from abliterate.ablation.loading import check_model
    from abliterate.search.worker import FINISHED, finished
    from abliterate.storage.records import TrialRecord

    check_model(config.model, [] if config.device_map else devices, config.trust_remote_code, config.dtype)
    if config.judge not in ("markers", "llm"):
        config.judge_settings().build()  # a plug-in judge that cannot be imported or made fails here, in one line
    elif config.judge_model:
        check_model(config.judge_model, dtype=config.dtype)
    warm = None
    if warm_start:
        from abliterate.search.warm import front_points, parse_source

        source_url, source_study = parse_source(warm_start)
        warm = front_points(normalize_url(source_url), source_study, config.space)
    opened = open_storage(storage_url)
    study, resumed = create_or_resume(opened, name, config)
    out = console()
    opened.tolerate_outages(config.grace_period, lambda line: out.print(line, highlight=False))
    out.print(f"{'resumed' if resumed else 'created'} study {name!r} in {redacted(storage_url)}: {finished(study)}/{config.n_trials} finished")
    if warm:
        from abliterate.search.warm import dropped, enqueue_front

        out.print(f"  warm start: {enqueue_front(study, warm)} trial(s) of {source_study!r}'s feasible front enqueued first")
        if dropped(warm):
            out.print(f"  warm start: dropped what this study's space does not search: {', '.join(dropped(warm))}", highlight=False)

    last, advised = "", False

    def progress():
        nonlocal last, advised
        try:
            with opened.patience(0):  # a tick must not hold up the supervision of the workers
                states = [t.state.name for t in study.get_trials(deepcopy=False)]
        except DatabaseUnreachable:
            line = f"  database unreachable; the workers wait for it (up to {config.grace_period} s) and go on"
            if line != last:
                out.print(line, highlight=False)
                last = line
            return
        done = states.count("COMPLETE") + states.count("PRUNED")
        line = (f"  finished {done}/{config.n_trials} ({states.count('PRUNED')} pruned: dominated), "
                f"running {states.count('RUNNING')}, failed {states.count('FAIL')}")
        if line != last:
            out.print(line, highlight=False)
            last = line
        if cpu_workers and not advised and done:
            try:
                with opened.patience(0):
                    seconds = [s for s in (TrialRecord.of(t).seconds_total for t in study.get_trials(deepcopy=False, states=FINISHED))
                               if s is not None]
            except DatabaseUnreachable:
                return
            if seconds and done < config.n_trials:
                out.print(cpu_advice(seconds, config.n_trials - done, len(devices)), highlight=False)
            advised = bool(seconds)

    cpu_workers = sum(d == "cpu" or (d == "auto" and not _has_gpu()) for d in devices)
    if cpu_workers:
        # Workers sharing the CPU each get their share of the cores: oversubscribed torch
        # threads wait on each other and made generation several times slower, not faster.
        extra = [*extra, "--threads", str(max(1, (os.cpu_count() or 1) // cpu_workers))]
    status = (supervise(storage_url, name, devices, tick=progress, poll=5.0, extra=extra)
              if finished(study) < config.n_trials else 0)
    from abliterate.search.cli.browse import print_front

    print_front(study, out)
    if closing:
        out.print(f"browse it: abliterate dashboard --storage {redacted(storage_url)}")
    return status


def cpu_advice(seconds: list[float], remaining: int, workers: int) -> str:
    """What the rest of a study costs on the CPU, from the ``seconds`` its finished trials took
    there, and, when that is an hour or more, how to spend less: said once, after the first trial."""
    per_trial = sum(seconds) / len(seconds)
    left = remaining * per_trial / workers
    time_left = f"{left / 3600:.1f} h" if left >= 3600 else f"{left / 60:.0f} min" if left >= 60 else f"{left:.0f} s"
    took = f"{per_trial:.0f}" if per_trial >= 10 else f"{per_trial:.1f}"
    line = (f"  on the CPU a trial took {took} s (mean of {len(seconds)}): the {remaining} to go take about {time_left} "
            f"with {workers} worker(s)")
    if left < 3600:
        return line
    return (f"{line}\n  to spend less: stop early (Ctrl-C keeps what is done; --trials extends it later), or start a study "
            f"with fewer evaluation prompts (--split 64,50,100: each trial answers all of them), shorter answers "
            f"(--max-new-tokens 24) and fewer trials (--trials 30); a larger --batch-size where memory allows")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


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
