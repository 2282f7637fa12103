"""The promoter: Pareto candidates -> confirmation -> checkpoint -> agent sweep -> gate.

Each feasible front trial is claimed with a lease (two promoters never work on one; a crashed
promoter's lease expires and the candidate is taken again) and goes through these statuses:

``confirming`` -> ``dropped`` (no longer beats the base model on the held-out confirmation
prompts, or random directions baked with its profile drop refusal as much: not specific) or
``sweeping`` (checkpoint written atomically, attempts being run) -> ``accepted`` or ``no_lift``
(the gate's decision). The runner is checked before any candidate (a missing program, no Docker
engine: one error, nothing confirmed or exported); when it fails later anyway the candidate keeps
its status with the error, and the next promoter run retries it. So does a candidate whose sweeps
gave the gate nothing to decide on (no task with ``min_attempts`` valid attempts in each arm:
every attempt invalid): no verdict rests on no results, and it does not count as a look.

Every step's findings are kept in the project's tables, so a restarted promoter continues where
the last one stopped: confirmation is not redone, a stored attempt is never run again. The
baseline (unedited model) sweep is shared by all candidates of a runner configuration. An
accepted candidate can stop the study: workers finish their trial and exit.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from abliterate.ablation.errors import AblationError
from abliterate.objectives.gate import GateResult, TaskCounts, gate, no_evidence, underpowered
from abliterate.objectives.plan import Design, plan, plan_problem, summary
from abliterate.objectives.sweep.base import Runner, run_sweep
from abliterate.search.analysis import specificity_line
from abliterate.search.card import capability_line
from abliterate.search.front import feasible_front
from abliterate.search.kit import StudyKit
from abliterate.search.paths import study_folder
from abliterate.search.promotion_settings import DEFAULT_CONTROLS, MAX_SECONDS, PromotionSettings
from abliterate.search.study import load, stop_requested
from abliterate.storage.leases import Leases
from abliterate.storage.optuna_access import append_trial_note, set_trial_user_attrs
from abliterate.storage.promotions import PromotionStore, SweepStore
from abliterate.storage.records import FINAL, STOP, Confirmation, Promotion, Status, TrialRecord, verdict_attrs

# The settings live beside, and are this module's too (callers import them from here).
__all__ = ["DEFAULT_CONTROLS", "FINAL", "Promoter", "PromotionSettings", "Status", "promotion_note", "report"]


class Promoter:
    """Promotes the feasible front of one study through one runner."""

    def __init__(self, storage, study_name: str, runner: Runner, settings: PromotionSettings = PromotionSettings(),
                 log: Callable[[str], None] = print):
        self.storage, self.runner, self.settings, self.log = storage, runner, settings, log
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # The study's model, payload and prompts, loaded on first need.
        self.kit = StudyKit(storage, study_name, settings.device, owner=self.owner)
        self.study, self.config = self.kit.study, self.kit.config
        self.config.check_prompt_files()  # now, not at the first candidate's confirmation
        runner.check()  # now, not after a candidate's confirmation and export
        self.name = study_name
        self.leases = Leases(storage.engine, self.owner, settings.lease_seconds)
        self.promotions = PromotionStore(storage.engine, study_name)
        self.root = study_folder(Path(settings.checkpoints).expanduser().resolve(), study_name)
        self._confirmation = None  # (scorer, base model's refusal) on the confirmation prompts, on first need
        self._capability_base = None  # (questions, the base model's answers, its harmless answer lengths), on first need
        self.without_verdict: set[int] = set()  # candidates this run left without a verdict (no valid results)
        self._retried: set[str] = set()  # sweeps whose given-up attempts this run tried again
        tasks = len(runner.tasks())
        warning = underpowered(settings.rule, settings.attempts, tasks)
        if warning:  # refused before any sweep: a week of agent runs that can never pass is worth one line now
            raise AblationError(f"this design can never accept a candidate: {warning}")
        design = Design(settings.rule, tasks, settings.attempts)
        too_costly = plan_problem(design, settings.rule.candidates, studies=4000)
        self.log(f"design: plan figures not computed: {too_costly}" if too_costly else
                 summary(plan(design, settings.rule.candidates, studies=4000)))

    # ---- what to promote -------------------------------------------------------------------

    def pending(self) -> list[FrozenTrial]:
        """Front trials with no final promotion status yet, best refusal first; not those this
        run left without a verdict (the next run tries them again)."""
        done = {n for n, promotion in self.promotions.all().items() if promotion.settled(self.settings.include_not_specific)}
        done |= self.without_verdict
        front = [t for t in feasible_front(self.study) if t.number not in done]
        if self.settings.include_not_specific:
            return front
        # A trial whose refusal drop random directions match (abliterate controls, run before
        # promotion) is skipped; the others are controlled in their confirmation.
        return [t for t in front if not TrialRecord.of(t).not_specific]

    def skipped(self) -> list[FrozenTrial]:
        """Front trials left out because abliterate controls found them not specific."""
        if self.settings.include_not_specific:
            return []
        done = {n for n, promotion in self.promotions.all().items() if promotion.settled(self.settings.include_not_specific)}
        return [t for t in feasible_front(self.study) if t.number not in done and TrialRecord.of(t).not_specific]

    def run_once(self) -> int:
        """Promote every pending candidate no other promoter holds; how many reached a final status."""
        finished = 0
        for trial in self.skipped():
            self.log(f"trial {trial.number}: not specific (abliterate controls), skipped; --include-not-specific promotes it")
        for trial in self.pending():
            if stop_requested(self.study):
                break
            key = f"promotion:{self.name}:{trial.number}"
            if not self.leases.acquire(key):
                self.log(f"trial {trial.number}: another promoter holds it")
                continue
            with self.leases.held(key) as lost:
                # The pending list was read before the lease: another promoter may have finished
                # this candidate since, and its verdict must stand (other settings would overwrite it).
                earlier = self.promotions.get(trial.number)
                if earlier is not None and earlier.settled(self.settings.include_not_specific):
                    continue
                status = self.promote(trial)
                if lost.is_set():
                    self.log(f"trial {trial.number}: the lease was lost while working; the next holder re-checks it")
            finished += status.final
        return finished

    def watch(self, poll: float = 30.0) -> None:
        """Promote as the front changes, until the study stops or is complete and fully promoted.

        Trials of dead workers are failed here too (see storage.stale), so a study whose workers
        all died does not hold this loop forever on trials that stay RUNNING."""
        if not 0 < poll <= MAX_SECONDS:
            raise ValueError(f"poll must be above 0 seconds and at most {MAX_SECONDS}, got {poll}")
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(self.study)
            self.run_once()
            if stop_requested(self.study):
                self.log(f"study {self.name!r} was stopped: {stop_requested(self.study)['reason']}")
                return
            states = [t.state for t in self.study.get_trials(deepcopy=False)]
            done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
            complete = done >= self.config.n_trials and TrialState.RUNNING not in states
            if complete and not self.pending():
                self.log(f"study {self.name!r} is complete and its front is promoted")
                return
            time.sleep(poll)

    # ---- one candidate ---------------------------------------------------------------------

    def promote(self, trial: FrozenTrial) -> Status:
        """Take ``trial`` as far as it goes; returns its status."""
        n = trial.number
        earlier = self.promotions.get(n) or Promotion(Status.CONFIRMING)
        try:
            if earlier.confirmation is None:
                self.promotions.update(n, Status.CONFIRMING)
                confirmation = self.confirm(trial)
                self.promotions.update(n, Status.CONFIRMING if confirmation.passed else Status.DROPPED, confirmation=confirmation)
                self.log(f"trial {n}: confirmation refusal {confirmation.refusal:.3f} vs base {confirmation.base_refusal:.3f}, "
                         f"KL {confirmation.kl:.4f}: {'passed' if confirmation.passed else 'dropped'}"
                         f"{' (not specific)' if confirmation.specific is False else ''}")
                if not confirmation.passed:
                    self._record(trial, Status.DROPPED, confirmation)
                    return Status.DROPPED
            elif not earlier.confirmation.passed:
                if not (self.settings.include_not_specific and earlier.confirmation.only_not_specific):
                    return Status.DROPPED
                # Dropped by an earlier run for being not specific alone; asked for now.
                self.promotions.update(n, Status.CONFIRMING, confirmation=earlier.confirmation.passing())
                self.log(f"trial {n}: not specific, promoted as --include-not-specific asks")
            checkpoint = self.export(trial)
            self.promotions.update(n, Status.SWEEPING, checkpoint=str(checkpoint))
            # An earlier run found no valid results: its invalid attempts get another round.
            retry = earlier.no_verdict > 0
            baseline = self.sweep(self.base_model(), f"baseline:{self.config.model}:{self.runner.fingerprint()}", "baseline", retry)
            candidate = self.sweep(str(checkpoint), f"{self.name}/trial/{n}:{self.runner.fingerprint()}", f"trial-{n}", retry)
        except AblationError as error:
            self.promotions.update(n, self.promotions.get(n).status, error=str(error))
            raise
        counts = [TaskCounts(task, *candidate.get(task, (0, 0)), *baseline.get(task, (0, 0))) for task in self.runner.tasks()]
        missing = no_evidence(counts, self.settings.rule)
        if missing:  # pending, with the reason; not a look: no alpha is spent on no data
            self.promotions.update(n, Status.SWEEPING, error=f"no verdict: {missing}", no_verdict=earlier.no_verdict + 1)
            self.without_verdict.add(n)
            self.log(f"trial {n}: no verdict: {missing}; it stays pending and the next promote run retries its invalid attempts")
            return Status.SWEEPING
        look, tested_before = self.looks(n)
        result = gate(counts, self.settings.rule, look, tested_before)
        status = Status.ACCEPTED if result.accepted else Status.NO_LIFT
        self.promotions.update(n, status, gate=result.as_dict(), runner=self.runner.name, attempts=self.settings.attempts)
        promotion = self.promotions.get(n)
        self._restate(checkpoint, promotion)
        self._record(trial, status, promotion.confirmation, result)
        self.log(f"trial {n}: {status} ({result.reason})")
        if result.accepted and self.settings.stop_at_first_lift:
            self.study.set_user_attr(STOP, {"trial": n, "reason": f"trial {n} accepted: {result.reason}"})
            self.log(f"stopping study {self.name!r}: workers finish their trial and exit")
        return status

    def looks(self, trial_number: int) -> tuple[int, int]:
        """(this candidate's place among the study's gated candidates, task tests before it): every
        earlier gate decision counts, so the study-wide rule spends alpha once per candidate."""
        earlier = [promotion.gate for number, promotion in self.promotions.all().items()
                   if number != trial_number and promotion.gate is not None]
        return len(earlier) + 1, sum(len(g["tasks"]) for g in earlier)

    def confirm(self, trial: FrozenTrial) -> Confirmation:
        """Re-score on the held-out confirmation prompts with longer answers, against the base
        model; a candidate that beats it is then put to the specificity controls (:meth:`controls`).

        ``beats_base``: the confirmation's own finding; ``passed``: that, and specific (or not
        controlled, or ``include_not_specific``); ``controls``: what the controls found."""
        scorer, base_refusal = self._confirmation_bench()
        outcome = scorer.run(self.kit.candidate(trial.params))
        refusal = outcome.values[0]
        beats = bool(outcome.feasible and refusal <= base_refusal - self.settings.margin)
        found = Confirmation(refusal, outcome.kl, base_refusal, self.settings.margin, passed=beats, feasible=outcome.feasible,
                             beats_base=beats, refusal_rate=outcome.refusal.rate("refusal") if outcome.refusal else None)
        if not beats:  # the controls cost a dozen refusal passes: not for a candidate dropped anyway
            return found
        capability = self.capability(trial)
        self.log(f"trial {trial.number}: capability {capability.accuracy:.0%} of {capability.questions} questions (base "
                 f"{capability.base_accuracy:.0%}), harmless answers {capability.median_length:.0f} tokens at the median "
                 f"(base {capability.base_median_length:.0f})")
        controls = self.controls(trial)
        specific = controls.get("specific")
        return replace(found, controls=controls, specific=specific, capability=capability.as_dict(),
                       passed=not (specific is False and not self.settings.include_not_specific))

    def capability(self, trial: FrozenTrial):
        """The candidate's capability check against the base model's (:mod:`objectives.capability`):
        the shipped questions, and greedy answers to the harmless confirmation prompts as long as
        the confirmation's refusal answers. Reported, not a condition of passing."""
        from abliterate.ablation.resolve import resolve
        from abliterate.objectives.capability import answer_lengths, ask, check, load_questions

        scorer, _ = self._confirmation_bench()
        kit, harmless = self.kit, self.kit.prompts["harmless", "confirmation"]
        tokens = self.settings.confirm_tokens or 2 * self.config.max_new_tokens
        if self._capability_base is None:
            questions = load_questions()
            self._capability_base = (questions, ask(kit.model, questions, kit.chat, kit.config.batch_size),
                                     answer_lengths(kit.model, harmless, kit.chat, tokens, kit.config.batch_size))
        questions, answers, lengths = self._capability_base
        with scorer.baker.baked_into(resolve(kit.candidate(trial.params), scorer.directions, scorer.baker.writers)):
            return check(kit.model, answers, lengths, questions, harmless, kit.chat, tokens, kit.config.batch_size)

    def controls(self, trial: FrozenTrial) -> dict:
        """The candidate's specificity controls (:func:`search.analysis.run_controls`): the
        trial's own findings when ``abliterate controls`` or an earlier promoter ran them; else
        ``settings.controls`` random directions baked with its profile, and the direction learned
        on half the extraction prompts, scored on the other half and the confirmation prompts,
        recorded on the trial. The verdict is the random band's; the holdout is reported beside
        it. ``{"not_run": why}`` when none can run: ``--controls 0``, or an edit that is not one
        direction (cone, sae, amplify), which is then promoted as before."""
        from abliterate.search.analysis import holdout_unavailable, not_measurable, record_controls, run_controls, verdict

        record = TrialRecord.of(trial)
        if record.specific is not None:
            return dict(record.controls or {}) | {"specific": record.specific}
        reason = "--controls 0" if not self.settings.controls else not_measurable(trial.params)
        if reason:
            self.log(f"trial {trial.number}: specificity controls not run: {reason}")
            return {"not_run": reason}
        no_holdout = holdout_unavailable(self.kit.prompts)
        if no_holdout:
            self.log(f"trial {trial.number}: holdout control not run: {no_holdout}")
        result = run_controls(self.kit, trial.params, self.settings.controls, holdout=no_holdout is None)
        summary = record_controls(self.storage, self.study, trial, result)
        self.log(f"trial {trial.number}: controls: {verdict(result)}")
        return summary | ({"holdout": {"not_run": no_holdout}} if no_holdout else {})

    def export(self, trial: FrozenTrial) -> Path:
        """The candidate's checkpoint folder with its model card and reproduction record, written
        atomically (an existing one is complete)."""
        from abliterate.search.checkpoint import export_loaded

        target = self.root / f"trial-{trial.number}"
        if (target / "config.json").exists():
            return target
        export_loaded(self.kit, trial, self.promotions.get(trial.number), target, overwrite=True)
        self.log(f"trial {trial.number}: checkpoint {target}")
        return target

    def base_model(self) -> str:
        """A folder runners can load or serve: the study's model itself, or an export of it."""
        from abliterate.ablation.export import export_checkpoint

        if Path(self.config.model).is_dir():
            return str(Path(self.config.model).resolve())
        target = self.root / "base"
        if not (target / "config.json").exists():
            export_checkpoint(self.kit.model, target, overwrite=True)
        return str(target)

    def sweep(self, model: str, key: str, label: str, retry: bool = False) -> dict[str, tuple[int, int]]:
        """task -> (passes, valid attempts) of ``model``, running only what is not stored yet;
        with ``retry``, attempts given up as invalid get one more round (once per sweep and run).

        The baseline is shared: under its own lease, so two promoters do not run it together.
        """
        store = SweepStore(self.storage.engine, key)
        lease = f"sweep:{key}"
        while not self.leases.acquire(lease):
            self.log(f"  {label}: another promoter is running this sweep; waiting")
            time.sleep(max(1.0, self.settings.lease_seconds / 10))
        with self.leases.held(lease):
            self.log(f"  {label} sweep ({self.runner.name}, {self.settings.attempts} attempts per task)")
            fresh = retry and key not in self._retried
            self._retried |= {key} if fresh else set()
            return run_sweep(self.runner, model, self.settings.attempts, store, self.root / "sweeps" / label,
                             self.settings.max_invalid, self.log, fresh=fresh)

    # ---- helpers ---------------------------------------------------------------------------

    def _confirmation_bench(self):
        """(scorer, the base model's refusal) on the held-out confirmation prompts, with answers
        ``confirm_tokens`` long (default twice the study's), made once."""
        if self._confirmation is None:
            from abliterate.search.trial import TrialRunner

            kit = self.kit
            directions = kit.payload()  # before the model: a study without directions is told at once
            prompts, loaded = kit.prompts, kit.model
            config = kit.config  # with --batch-size auto, the batch size chosen here
            proxy = kit.proxy(self.settings.confirm_tokens or 2 * config.max_new_tokens)
            scorer = TrialRunner(loaded, directions, prompts["harmful", "confirmation"], prompts["harmless", "confirmation"],
                                 proxy, config.kl_cap, config.kl_tokens, kit.chat, config.batch_size)
            self._confirmation = scorer, proxy.score(loaded, prompts["harmful", "confirmation"]).value
        return self._confirmation

    def _restate(self, checkpoint: Path, promotion: Promotion) -> None:
        """The verdict in the checkpoint's model card and record too (checkpoints exported by an
        older version have no record and are left as they are)."""
        from abliterate.search.checkpoint import restate_promotion
        from abliterate.search.reproduce import REPRO_FILE

        if (checkpoint / REPRO_FILE).is_file():
            restate_promotion(checkpoint, promotion)

    def _record(self, trial: FrozenTrial, status: Status, confirmation: Confirmation | None, result: GateResult | None = None) -> None:
        """The verdict on the trial itself: user attrs and a dashboard note section."""
        attrs = verdict_attrs(status, confirmation) if result is None else verdict_attrs(
            status, confirmation, result.reason, min((t.p for t in result.tasks), default=1.0), result.pooled_p)
        set_trial_user_attrs(self.storage, trial, attrs)
        append_trial_note(self.storage, self.study, trial, "Promotion", promotion_note(status, confirmation, result))


def promotion_note(status: Status, confirmation: Confirmation | None, result: GateResult | None) -> str:
    """Markdown for the trial's dashboard note: the decision, the specificity controls' word and
    the per-task table."""
    lines = [f"**{status}**"]
    if confirmation is not None:
        c = confirmation
        lines.append(f"confirmation refusal {c.refusal:.3f} vs base {c.base_refusal:.3f} (margin {c.margin}), KL {c.kl:.4f}")
        specificity = specificity_line(c.to_record())  # None: no controls (dropped before them, or an older promotion)
        if specificity:
            lines.append(specificity)
        if c.capability:
            lines.append(f"capability: {capability_line(c.capability)}")
    if result is None:
        return "\n".join(lines)
    lines += [result.reason, "", "| task | candidate | baseline | p | p (Holm) | p (BH) |", "|---|---|---|---|---|---|"]
    for t in result.tasks:
        c = t.counts
        lines.append(f"| {c.task} | {c.candidate_pass}/{c.candidate_n} | {c.baseline_pass}/{c.baseline_n} | {t.p:.3g} | {t.p_holm:.3g} | {t.p_bh:.3g} |")
    ratio = "n/a" if result.pooled_odds_ratio is None else f"{result.pooled_odds_ratio:.3g}"
    lines += ["", f"pooled CMH p {result.pooled_p:.3g}, odds ratio {ratio}"] + [f"- {flag}" for flag in result.flags]
    return "\n".join(lines)


def report(storage, study_name: str) -> list[dict]:
    """Every promotion of the study with what each step found (for ``abliterate report``), and
    the front trials that ``abliterate controls`` found not specific before any promotion
    (status ``skipped``, their ``controls`` beside), by trial number."""
    study, _ = load(storage, study_name)  # a one-line error for an unknown study
    promotions = PromotionStore(storage.engine, study_name).all()
    rows = [{"trial": number, "status": str(p.status), **p.details} for number, p in promotions.items()]
    rows += [{"trial": t.number, "status": str(Status.SKIPPED), "controls": dict(TrialRecord.of(t).controls or {}) | {"specific": False}}
             for t in feasible_front(study) if t.number not in promotions and TrialRecord.of(t).not_specific]
    return sorted(rows, key=lambda row: row["trial"])
