"""A worker: joins a study with only a storage URL and a study name, and runs trials until the
study has its number of finished trials (counted across all workers; failed and retried trials
do not count twice)."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from ablation.directions import by_method
from ablation.loading import load_model
from objectives.refusal import ChatFormat, make_proxy
from search.front import dominating_point
from search.space import candidate_from_params, starting_points, suggest
from search.study import load, stop_requested
from search.trial import (
    TrialOutcome,
    TrialRunner,
    capture_extraction,
    directions_from_bytes,
    directions_key,
    directions_to_bytes,
    strongest_layer,
)
from storage.cache import ArtifactCache
from storage.rdb import open_storage


# A pruned trial ran to its verdict (it cannot reach the front), so it counts as finished.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_worker(storage_url: str, study_name: str, device: str = "auto", heartbeat_interval: int = 60,
               grace_period: int = 600, max_retry: int = 3, log: Callable[[str], None] = print,
               judge_device: str | None = None) -> int:
    """Run trials of ``study_name`` until it has enough finished trials; returns how many ran here.

    ``judge_device``: where a separate judge model (the study's ``judge_model``) runs; default ``device``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial logs its own one line
    storage = open_storage(storage_url, heartbeat_interval, grace_period, max_retry)
    study, config = load(storage, study_name)
    if stop_requested(study):
        log(f"study {study_name!r} was stopped: {stop_requested(study)['reason']}")
        return 0
    if finished(study) >= config.n_trials:
        log(f"study {study_name!r} already has {finished(study)} of {config.n_trials} finished trials")
        return 0
    prompts = config.prompts()
    chat = ChatFormat(enable_thinking=config.enable_thinking)
    loaded = load_model(config.model, config.dtype, device)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    cache = ArtifactCache(storage.engine, study_name, owner, stale_after=grace_period)
    methods = sorted(config.space.methods)
    computed_here = False

    def compute() -> bytes:
        nonlocal computed_here
        computed_here = True
        residuals = capture_extraction(loaded, prompts["harmful", "extraction"], prompts["harmless", "extraction"], chat, config.batch_size)
        # Once per study, with the directions: the designed first trials (a retried computation
        # enqueues nothing twice).
        for point in starting_points(config.space, strongest_layer(*residuals), config.starting_points):
            study.enqueue_trial(point, user_attrs={"starting_point": True}, skip_if_exists=True)
        return directions_to_bytes({method: by_method(method, *residuals)[0] for method in methods})

    payload = cache.get_or_compute(directions_key(methods), compute)
    log(f"directions ({', '.join(methods)}): {'computed here' if computed_here else 'from the study cache'}")
    directions = directions_from_bytes(payload)
    num_layers = next(iter(directions.values())).shape[0]
    runner = TrialRunner(loaded, directions, prompts["harmful", "evaluation"], prompts["harmless", "evaluation"],
                         make_proxy(config.proxy, config.max_new_tokens, config.batch_size, chat,
                                    config.judge_settings(judge_device or device).build()),
                         config.kl_cap, config.kl_tokens, chat, config.batch_size)
    ran = 0

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        nonlocal ran
        params = suggest(trial, config.space)
        dominated_by = []

        def give_up_at(kl: float) -> int | None:
            """Failing prompts from which this trial is dominated by a finished one (exact pruning)."""
            done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible")]
            best = dominating_point([tuple(t.values) for t in done], kl)
            if best is None:
                return None
            dominated_by.append(done[best].number)
            return math.ceil(done[best].values[0] * len(runner.harmful) - 1e-9)

        outcome = runner.run(candidate_from_params(params, num_layers), give_up_at)
        record(trial, outcome, config.kl_cap, owner, dominated_by[-1] if outcome.pruned else None)
        ran += 1
        if outcome.pruned:
            log(f"trial {trial.number}: pruned at refusal >= {outcome.refusal.value:.3f}, KL {outcome.kl:.4f} "
                f"(dominated by trial {dominated_by[-1]}), {outcome.seconds['total']:.1f} s")
            raise optuna.TrialPruned(f"dominated by trial {dominated_by[-1]}")
        log(f"trial {trial.number}: refusal {outcome.values[0]:.3f}, KL {outcome.kl:.4f}"
            f"{'' if outcome.feasible else ' (over the KL cap)'}, {outcome.seconds['total']:.1f} s")
        return outcome.values

    def stop_when_asked(study: optuna.Study, _trial) -> None:
        if stop_requested(study):  # an accepted promotion: finish this trial, take no other
            log(f"study {study_name!r} was stopped: {stop_requested(study)['reason']}")
            study.stop()

    study.optimize(objective, callbacks=[MaxTrialsCallback(config.n_trials, states=FINISHED), stop_when_asked],
                   gc_after_trial=False)
    return ran


def record(trial: optuna.Trial, outcome: TrialOutcome, kl_cap: float, owner: str, dominated_by: int | None = None) -> None:
    """Constraint, user attrs (the dashboard does not read Optuna 5 constraints) and a note."""
    trial.set_constraint("kl_over_cap", outcome.kl - kl_cap)
    attrs = {"kl": outcome.kl, "feasible": outcome.feasible, "worker": owner, "edited_layers": list(outcome.edited_layers),
             **{f"seconds_{k}": round(v, 3) for k, v in outcome.seconds.items()}}
    if outcome.pruned:
        attrs |= {"pruned": True, "refusal_at_least": outcome.refusal.value, "dominated_by": dominated_by}
    elif outcome.refusal:
        attrs |= {"refusal": outcome.refusal.value, "refusal_rate": outcome.refusal.rate("refusal"),
                  "degenerate_rate": outcome.refusal.rate("degenerate"), "counts": outcome.refusal.counts}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    from optuna_dashboard import save_note

    save_note(trial, note(outcome, dominated_by))


def note(outcome: TrialOutcome, dominated_by: int | None = None) -> str:
    """The trial's dashboard note: its figures and a few sample answers."""
    lines = [f"**KL** {outcome.kl:.4f}  **feasible** {outcome.feasible}"]
    if outcome.refusal is None:
        lines.append("\nKL over the cap: refusal pass skipped.")
        return "\n".join(lines)
    if outcome.pruned:
        lines.append(f"\nPruned: refusal at least {outcome.refusal.value:.3f} when the refusal pass stopped, so trial "
                     f"{dominated_by} (no more KL, no more refusals) dominates it whatever the rest would have said.")
        return "\n".join(lines)
    score = outcome.refusal
    lines.append(f"**refusal** {score.value:.3f} (refusal rate {score.rate('refusal'):.2f}, degenerate {score.rate('degenerate'):.2f})")
    for prompt, response in score.samples:
        lines += ["", f"> {prompt}", "", "```", response.strip()[:400], "```"]
    return "\n".join(lines)
