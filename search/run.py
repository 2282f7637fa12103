"""Running a study on this machine: create or resume it, then supervise local workers until it
has its trials, saying how it goes. ``abliterate search`` and the demo are its clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import optuna

from abliterate.search.study import StudyConfig


def run_study(storage: str | None, name: str, config: StudyConfig, devices: Sequence[str], extra: Sequence[str] = (), *,
              warm_start: str | None = None, origins: Sequence[str] = (),
              say: Callable[[str], None] = print) -> tuple[int, optuna.Study]:
    """Create or resume ``name`` and run a local worker per device in ``devices`` (none: create or
    extend the study only) until it has ``config.n_trials`` finished trials.

    Everything a worker would trip over (prompts, categories, SAEs, model, devices, judge) is
    checked before the study is written. ``extra`` is passed on to every worker's command line.
    ``warm_start`` (``STORAGE_URL#STUDY``): that study's feasible front is enqueued first (see
    search.warm). ``origins``, one line per setting that is not its default and where it came
    from, are said when the study is created. ``say`` hears every line of progress. Returns the
    supervisor's exit status (0 when every worker ended well) and the study."""
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

    check_model(config.model, [] if config.device_map else list(devices), config.trust_remote_code, config.dtype)
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
    opened.tolerate_outages(config.grace_period, say)
    say(f"{'resumed' if resumed else 'created'} study {name!r} in {redacted(storage_url)}: {finished(study)}/{config.n_trials} finished")
    if not resumed:
        for line in origins:
            say(line)
    if warm:
        from abliterate.search.warm import dropped, enqueue_front

        say(f"  warm start: {enqueue_front(study, warm)} trial(s) of {source_study!r}'s feasible front enqueued first")
        if dropped(warm):
            say(f"  warm start: dropped what this study's space does not search: {', '.join(dropped(warm))}")

    last, advised = "", False

    def progress():
        nonlocal last, advised
        try:
            with opened.patience(0):  # a tick must not hold up the supervision of the workers
                states = [t.state.name for t in study.get_trials(deepcopy=False)]
        except DatabaseUnreachable:
            line = f"  database unreachable; the workers wait for it (up to {config.grace_period} s) and go on"
            if line != last:
                say(line)
                last = line
            return
        done = states.count("COMPLETE") + states.count("PRUNED")
        line = (f"  finished {done}/{config.n_trials} ({states.count('PRUNED')} pruned: dominated), "
                f"running {states.count('RUNNING')}, failed {states.count('FAIL')}")
        if line != last:
            say(line)
            last = line
        if cpu_workers and not advised and done:
            try:
                with opened.patience(0):
                    seconds = [t.user_attrs["seconds_total"] for t in study.get_trials(deepcopy=False, states=FINISHED)
                               if "seconds_total" in t.user_attrs]
            except DatabaseUnreachable:
                return
            if seconds and done < config.n_trials:
                say(cpu_advice(seconds, config.n_trials - done, len(devices)))
            advised = bool(seconds)

    cpu_workers = sum(d == "cpu" or (d == "auto" and not _has_gpu()) for d in devices)
    if cpu_workers:
        # Workers sharing the CPU each get their share of the cores: oversubscribed torch
        # threads wait on each other and made generation several times slower, not faster.
        extra = [*extra, "--threads", str(max(1, (os.cpu_count() or 1) // cpu_workers))]
    status = (supervise(storage_url, name, list(devices), tick=progress, poll=5.0, extra=list(extra))
              if finished(study) < config.n_trials else 0)
    return status, study


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
