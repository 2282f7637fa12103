"""A worker: joins a study with only a storage URL and a study name, and runs trials until the
study has its number of finished trials (counted across all workers; failed and retried trials
do not count twice)."""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import replace

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from abliterate.search import baseline, halt
from abliterate.search.front import dominating_point, screen_dominates
from abliterate.search.interrupts import check, held, let_go, mark_running, owner_name, requeue_trials_of
from abliterate.search.kit import StudyKit
from abliterate.search.space import starting_points, suggest
from abliterate.search.study import stop_requested
from abliterate.search.trial import TrialOutcome, TrialRunner, strongest_layer, writing_kernel
from abliterate.storage.errors import DatabaseUnreachable
from abliterate.storage.leases import Leases
from abliterate.storage.optuna_access import backend_of, record_heartbeat, set_system_attr, storage_of, stored_trial
from abliterate.storage.outage import describe
from abliterate.storage.rdb import open_storage
from abliterate.storage.records import BASELINE, DIRECTIONS_REPORT, PARAMS_COMPLETE, STARTS, TrialRecord

# A pruned trial ran to its verdict (it cannot reach the front), so it counts as finished.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_worker(storage_url: str, study_name: str, device: str = "auto", max_retry: int = 3,
               log: Callable[[str], None] | None = None, judge_device: str | None = None) -> int:
    """Run trials of ``study_name`` until it has enough finished trials; returns how many ran here.

    Each line is flushed as it is logged (default: stdout): a launcher or log collector reading a
    pipe sees a trial when it ends, not when a buffer fills. ``judge_device``: where a separate
    judge model (the study's ``judge_model``) runs; default ``device``. Heartbeats follow the
    study's interval and grace period. A lost database is waited for up to the grace period (after
    that, the running trial counts as crashed anyway): then DatabaseUnreachable.

    Interrupted (KeyboardInterrupt: Ctrl-C, or SIGTERM under search.interrupts.interrupted_once),
    the trial it asked is failed and queued again at once as the same candidate, and a direction
    computation under way gives its cache claim back."""
    log = log or say
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial logs its own one line
    storage = open_storage(storage_url, max_retry=max_retry, create=False)
    owner = owner_name(os.getpid())
    kit = StudyKit(storage, study_name, device, owner=owner, judge_device=judge_device)
    study, config = kit.study, kit.config
    heartbeat_interval, grace_period = config.heartbeat_interval, config.grace_period
    storage.tolerate_outages(grace_period, log)
    if stop_requested(study):
        log(f"study {study_name!r} was stopped: {stop_requested(study)['reason']}")
        return 0
    if finished(study) >= config.n_trials:
        log(f"study {study_name!r} already has {finished(study)} of {config.n_trials} finished trials")
        return 0
    prompts = kit.prompts
    started = time.monotonic()

    def step(line: str) -> None:
        """A start-up step, with the seconds since the worker began: start-up takes minutes on a CPU."""
        log(f"[{time.monotonic() - started:5.0f} s] {line}")

    step(f"loading {config.model} (dtype {config.dtype}, device {device})")
    loaded = kit.model
    step(f"loaded: {str(loaded.model.dtype).removeprefix('torch.')} on {loaded.device}")
    config = kit.config  # with --batch-size auto, the batch size chosen here
    if kit.batch_choice:
        step(kit.batch_choice.line)
    methods = sorted(config.space.methods)
    computed_here = False
    proxy = kit.proxy()

    def compute() -> dict:
        nonlocal computed_here
        computed_here = True
        halt.at("directions")
        harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
        step(f"computing the directions ({', '.join(methods)}) from {len(harmful)} harmful and {len(harmless)} harmless prompts")
        residuals = kit.extraction_residuals()
        # Once per study, with the directions: the designed first trials (a retried computation
        # enqueues nothing twice).
        strongest = strongest_layer(*residuals)
        writing = writing_kernel(*residuals, strongest) if config.measured_starts else None
        if writing:
            step(f"the layers write the refusal direction around {writing[0]:.2f} of depth (falloff {writing[1]:.2f}): "
                 "the designed trials' kernels are placed there")
        points = starting_points(config.space, strongest, config.starting_points, writing)
        study.set_user_attr(STARTS, {"strongest": strongest, "writing": list(writing) if writing else None})
        for point in points:
            study.enqueue_trial(point, user_attrs=TrialRecord(starting_point=True).to_attrs(), skip_if_exists=True)
        if points:
            step(f"{len(points)} designed starting points queued as the first trials")
        report = []

        def note(line: str) -> None:
            report.append(line)
            log(line)

        payload = kit.compute_payload(residuals, proxy, note)
        if report:  # what the directions look like (cone geometry, cos(r, c)), for whoever reads the study later
            study.set_user_attr(DIRECTIONS_REPORT, report)
        if baseline.baseline_of(study) is None:  # a computation retried after a crash does not measure it again
            harmful_evaluation = prompts["harmful", "evaluation"]
            step(f"measuring the base model's refusals on the {len(harmful_evaluation)} evaluation prompts (one refusal pass)")
            base = baseline.measure(loaded, proxy, harmful_evaluation, prompts["edgy", "evaluation"] if config.over_refusal else None,
                                    kit.chat, config.max_new_tokens, config.batch_size, capability=config.capability)
            study.set_user_attr(BASELINE, base)
            step(baseline.baseline_line(base))
            halt.at("baseline")
        return payload

    directions = kit.payload(compute)
    step(f"directions ({', '.join(methods)}): {'computed here' if computed_here else 'from the study cache'}")
    step(f"the base model's log-probs on the {len(prompts['harmless', 'evaluation'])} harmless evaluation prompts (KL's reference)")
    runner = TrialRunner(loaded, directions, prompts["harmful", "evaluation"], prompts["harmless", "evaluation"],
                         proxy, config.kl_cap, config.kl_tokens, kit.chat, config.batch_size,
                         prompts["edgy", "evaluation"] if config.over_refusal else None, config.max_new_tokens, config.screen != "off",
                         config.capability)
    cached = runner.kl.prefix.nbytes + sum(part.prefix.nbytes for part in (runner.screen, runner.capability) if part)
    step(f"prefix cache: {cached / 2**20:.1f} MiB of layer outputs (a trial runs the layers from its first edited one up)"
         + (f"; screen: the base model's refusals of {runner.screen.screened} prompts" if runner.screen else ""))
    step("ready: running trials")

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = suggest(halt.Sampling(trial) if halt.wanted("sampling") else trial, config.space)
        # Every param is recorded: from here on a retry of this trial is this very candidate.
        set_system_attr(study, trial, PARAMS_COMPLETE, True)
        halt.at("sampled", trial.number)
        dominated_by = []

        def give_up_at(kl: float) -> int | None:
            """Failing prompts from which this trial is dominated by a finished one (exact pruning)."""
            done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if TrialRecord.of(t).feasible]
            best = dominating_point([tuple(t.values) for t in done], kl)
            if best is None:
                return None
            dominated_by.append(done[best].number)
            return math.ceil(done[best].values[0] * len(runner.harmful) - 1e-9)

        def screened_out(kl: float, screen: float) -> int | None:
            """The first fully scored trial with no more KL and a screen lower by the margin: by the
            screen's reading this trial cannot beat it, so its refusal pass is skipped (--screen prune)."""
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                done = TrialRecord.of(t)
                if done.feasible and done.screen is not None and screen_dominates(done.kl, done.screen, kl, screen,
                                                                                   config.screen_margin):
                    return t.number
            return None

        # Pruning compares (refusal, KL) only: with a third objective a trial dominated there may
        # still reach the front, so every trial runs to its end.
        outcome = runner.run(kit.candidate(params), None if config.third_objective else give_up_at,
                             screened_out if config.screen == "prune" else None)
        by = outcome.screened_out_by if outcome.screened_out_by is not None else dominated_by[-1] if outcome.pruned else None
        record(trial, outcome, config.kl_cap, owner, by)
        halt.at("recorded", trial.number)
        if outcome.screened_out_by is not None:
            log(f"trial {trial.number}: pruned by the screen ({outcome.screen:.3f}, KL {outcome.kl:.4f}; trial {by} has "
                f"no more KL and a screen this one's exceeds by {config.screen_margin:.0%} or more), {outcome.seconds['total']:.1f} s")
            raise optuna.TrialPruned(f"screened out by trial {by}")
        if outcome.pruned:
            log(f"trial {trial.number}: pruned at refusal >= {outcome.refusal.value:.3f}, KL {outcome.kl:.4f} "
                f"(dominated by trial {by}), {outcome.seconds['total']:.1f} s")
            raise optuna.TrialPruned(f"dominated by trial {by}")
        over = f", {outcome.third} {outcome.values[2]:.3f}" if len(outcome.values) == 3 else ""
        log(f"trial {trial.number}: refusal {outcome.values[0]:.3f}, KL {outcome.kl:.4f}{over}"
            f"{'' if outcome.feasible else ' (over the KL cap)'}, {outcome.seconds['total']:.1f} s")
        return outcome.values

    ran = 0
    asking = Leases(storage.engine, owner, ttl=ASK_LEASE_SECONDS)
    try:
        while (trial := claim(study, config.n_trials, asking, poll=min(5.0, heartbeat_interval), log=log,
                              ride_out=storage.ride_out)) is not None:
            ran += run_trial(study, trial, objective, heartbeat_interval, grace_period, log)
    except KeyboardInterrupt as interrupt:
        let_go(interrupt)
        # An interrupted worker does not wait out an outage: its trial then counts as crashed once
        # the grace period passes (or its launcher hands it over), and is retried.
        with _impatient(study), suppress(DatabaseUnreachable):
            requeue_trials_of(study, owner)  # wherever it landed: asking, sampling, scoring or telling
        raise
    if stop_requested(study):
        log(f"study {study_name!r} was stopped: {stop_requested(study)['reason']}")
    return ran


def say(line: str) -> None:
    print(line, flush=True)


ASK_LEASE_SECONDS = 30.0  # counting and asking take milliseconds; a dead asker blocks others this long at most


def claim(study: optuna.Study, n_trials: int, asking: Leases, poll: float = 5.0,
          log: Callable[[str], None] | None = None, ride_out: Callable = lambda call: call()) -> optuna.Trial | None:
    """The next trial for this worker, or None when the study needs no more.

    Stale trials of dead workers are failed first (and re-queued as the same candidate). A trial
    is asked only while finished plus running trials stay below ``n_trials``, counted and asked
    under one lease so that two workers never both take the last one. While the running trials
    of other workers would reach ``n_trials``, this one waits: they may finish, or die and be
    re-queued for it to take. The trial is marked as this worker's (search.interrupts) before
    an interrupt can stop the worker. ``ride_out`` carries the lease's calls over a lost database,
    as the study storage does its own (storage.outage).
    """
    log = log or say
    key = f"ask:{study.study_name}"
    said = ""
    while True:
        check()
        with warnings.catch_warnings(), held():  # a dead worker's trial is failed and re-queued in one piece
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(study)
        if stop_requested(study):
            return None
        while not ride_out(lambda: asking.acquire(key)):
            time.sleep(0.05)
        try:
            states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))]
            done, running = sum(s in FINISHED for s in states), states.count(TrialState.RUNNING)
            if done >= n_trials:
                return None
            if done + running < n_trials:
                with warnings.catch_warnings(), held():
                    # Optuna warns that heartbeats belong to Study.optimize; run_trial beats instead.
                    warnings.simplefilter("ignore", UserWarning)
                    trial = study.ask()
                    mark_running(study, trial, asking.owner)
                return trial
        finally:
            ride_out(lambda: asking.release(key))
        line = f"waiting: {running} running trial(s) would make {n_trials}; a trial of a dead worker comes back here"
        if line != said:
            log(line)
            said = line
        time.sleep(poll)


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], tuple[float, ...]],
              heartbeat_interval: float, grace_period: float = 600, log: Callable[[str], None] | None = None) -> bool:
    """Run ``objective`` on ``trial`` with heartbeats and tell the study how it ended. False when
    another process failed the trial meanwhile (its heartbeats missed the grace period): its
    result is dropped with one line, and the retry queued in its place runs the candidate again.

    An interrupt passes through: run_worker re-queues the trial. With the database lost for longer
    than the grace period (DatabaseUnreachable) the trial stays RUNNING: once the database is back
    it counts as crashed and is retried.
    """
    log = log or say
    halt.at("asked", trial.number)
    with Heartbeat(storage_of(study), trial, heartbeat_interval, grace_period, log):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            kept = tell(study, trial, state=TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:
            kept = False  # a param or result written after another process failed the trial
        except DatabaseUnreachable:
            raise
        except Exception:
            tell(study, trial, state=TrialState.FAIL)
            raise
        else:
            kept = tell(study, trial, values)
    if not kept:
        log(f"trial {trial.number} was failed by another worker meanwhile (no heartbeat seen for the study's grace "
            f"period, {grace_period:.0f} s); dropped, its retry runs the candidate again")
        return False
    halt.at("told", trial.number)
    return True


def tell(study: optuna.Study, trial: optuna.Trial, values: tuple[float, ...] | None = None,
         state: TrialState | None = None) -> bool:
    """``study.tell``; False, writing nothing, when the trial was finished already by another
    process (a worker tells its trial once, so a finished one was failed by a reaper)."""
    try:
        study.tell(trial, values, state=state)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        # ValueError: Optuna's own check found it finished ("Cannot tell a FAIL trial").
        if not stored_trial(study, trial).state.is_finished():
            raise
        return False
    return True


def _impatient(study: optuna.Study):
    """A block in which the study's storage reports a lost database at once (storage.outage)."""
    storage = backend_of(study)
    return storage.patience(0) if hasattr(storage, "patience") else nullcontext()


class Heartbeat:
    """Writes ``trial``'s heartbeat now and every ``interval`` seconds until the block ends.

    The thread outlives any failure: one that died would let another worker fail a live trial. A
    beat that fails is tried again at the next; after ``grace`` seconds without one stored, one
    line says the trial may be failed meanwhile (run_trial then drops its result).
    """

    def __init__(self, storage, trial: optuna.Trial, interval: float, grace: float = 600,
                 log: Callable[[str], None] | None = None):
        self.storage, self.trial, self.interval, self.grace, self.log = storage, trial, interval, grace, log or say
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        stored, warned = time.monotonic(), False
        while True:
            try:
                record_heartbeat(self.storage, self.trial)
                stored, warned = time.monotonic(), False
            except Exception as error:  # any failure at all: see the class docstring
                if not warned and time.monotonic() - stored > self.grace:
                    warned = True
                    self.log(f"trial {self.trial.number}: no heartbeat stored for {time.monotonic() - stored:.0f} s "
                             f"({describe(error)}); other workers may count it crashed; still trying")
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def record(trial: optuna.Trial, outcome: TrialOutcome, kl_cap: float, owner: str, dominated_by: int | None = None) -> None:
    """Constraint, user attrs (the dashboard does not read Optuna 5 constraints) and a note."""
    trial.set_constraint("kl_over_cap", outcome.kl - kl_cap)
    for key, value in measured(outcome, owner, dominated_by).to_attrs().items():
        trial.set_user_attr(key, value)
    from optuna_dashboard import save_note

    save_note(trial, note(outcome, dominated_by))


def measured(outcome: TrialOutcome, owner: str, dominated_by: int | None = None) -> TrialRecord:
    """What ``outcome`` puts on its trial: a pruned trial's refusal is a lower bound, not a rate."""
    record = TrialRecord(kl=outcome.kl, feasible=outcome.feasible, worker=owner, edited_layers=tuple(outcome.edited_layers),
                         seconds={k: round(v, 3) for k, v in outcome.seconds.items()},
                         over_refusal=outcome.over_refusal.rate("refusal") if outcome.over_refusal else None,
                         capability_accuracy=outcome.capability, screen=outcome.screen, decided_by=outcome.decided_by)
    if outcome.screened_out_by is not None:
        return replace(record, pruned=True, dominated_by=dominated_by)
    if outcome.pruned:
        return replace(record, pruned=True, refusal_at_least=outcome.refusal.value, dominated_by=dominated_by)
    if outcome.refusal:
        return replace(record, refusal=outcome.refusal.value, refusal_rate=outcome.refusal.rate("refusal"),
                       degenerate_rate=outcome.refusal.rate("degenerate"), counts=outcome.refusal.counts)
    return record


def note(outcome: TrialOutcome, dominated_by: int | None = None) -> str:
    """The trial's dashboard note: its figures and a few sample answers."""
    lines = [f"**KL** {outcome.kl:.4f}  **feasible** {outcome.feasible}"]
    if outcome.screen is not None:
        lines[0] += f"  **screen** {outcome.screen:.3f}"
    if outcome.screened_out_by is not None:
        lines.append(f"\nPruned by the screen: trial {dominated_by}, fully scored, has no more KL and a screen lower by at least the study's margin (a share of its own), so "
                     "this trial's refusal pass was skipped. The screen can be wrong where the judged count would not; "
                     "bench/trial_cost.py measures how often.")
        return "\n".join(lines)
    if outcome.refusal is None:
        lines.append("\nKL over the cap: refusal pass skipped.")
        return "\n".join(lines)
    if outcome.pruned:
        lines.append(f"\nPruned: refusal at least {outcome.refusal.value:.3f} when the refusal pass stopped, so trial "
                     f"{dominated_by} (no more KL, no more refusals) dominates it whatever the rest would have said.")
        return "\n".join(lines)
    score = outcome.refusal
    lines.append(f"**refusal** {score.value:.3f} (refusal rate {score.rate('refusal'):.2f}, degenerate {score.rate('degenerate'):.2f})")
    if outcome.over_refusal:
        lines.append(f"**over-refusal** {outcome.over_refusal.rate('refusal'):.3f} on {outcome.over_refusal.total} edgy prompts")
    if outcome.capability is not None:
        lines.append(f"**capability** {outcome.capability:.3f} of the capability questions answered right")
    for prompt, response in score.samples:
        lines += ["", f"> {prompt}", "", "```", response.strip()[:400], "```"]
    return "\n".join(lines)
