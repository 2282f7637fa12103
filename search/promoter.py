"""The promoter: Pareto candidates -> confirmation -> checkpoint -> agent sweep -> gate.

Each feasible front trial is claimed with a lease (two promoters never work on one; a crashed
promoter's lease expires and the candidate is taken again) and goes through these statuses:

``confirming`` -> ``dropped`` (no longer beats the base model on the held-out confirmation
prompts) or ``sweeping`` (checkpoint written atomically, attempts being run) -> ``accepted`` or
``no_lift`` (the gate's decision). When the runner cannot work (no Docker engine, a missing
command) the candidate keeps its status with the error, and the next promoter run retries it.

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
from dataclasses import dataclass, field
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from ablation.errors import AblationError
from objectives.gate import GateResult, GateRule, TaskCounts, gate, underpowered
from objectives.plan import Design, plan, summary
from objectives.sweep.base import Runner, run_sweep
from search.front import feasible_front
from search.study import STOP_ATTR, load, stop_requested
from storage.errors import StorageError
from storage.leases import Leases
from storage.promotions import PromotionStore, SweepStore
from storage.trial_attrs import append_trial_note, set_trial_user_attrs

FINAL = ("dropped", "accepted", "no_lift")


@dataclass(frozen=True)
class PromotionSettings:
    """How candidates are confirmed, swept and gated."""

    attempts: int = 5
    margin: float = 0.1
    confirm_tokens: int | None = None  # default: twice the study's max_new_tokens
    rule: GateRule = field(default_factory=GateRule)
    stop_at_first_lift: bool = False
    max_invalid: int = 2
    lease_seconds: float = 600.0
    checkpoints: str = "abliterate-checkpoints"
    device: str = "auto"
    include_not_specific: bool = False  # promote trials that abliterate controls found not specific
    controls: int = 0  # random directions of the specificity controls run in confirmation (0: none)


class Promoter:
    """Promotes the feasible front of one study through one runner."""

    def __init__(self, storage, study_name: str, runner: Runner, settings: PromotionSettings = PromotionSettings(),
                 log: Callable[[str], None] = print):
        self.storage, self.runner, self.settings, self.log = storage, runner, settings, log
        self.study, self.config = load(storage, study_name)
        self.config.check_prompt_files()  # now, not at the first candidate's confirmation
        self.name = study_name
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.leases = Leases(storage.engine, self.owner, settings.lease_seconds)
        self.promotions = PromotionStore(storage.engine, study_name)
        self.root = Path(settings.checkpoints).expanduser().resolve() / study_name
        self._bench = None  # model, directions and confirmation scorer, loaded on first need
        tasks = len(runner.tasks())
        warning = underpowered(settings.rule, settings.attempts, tasks)
        if warning:  # refused before any sweep: a week of agent runs that can never pass is worth one line now
            raise AblationError(f"this design can never accept a candidate: {warning}")
        self.log(summary(plan(Design(settings.rule, tasks, settings.attempts), settings.rule.candidates, studies=4000)))

    # ---- what to promote -------------------------------------------------------------------

    def pending(self) -> list[FrozenTrial]:
        """Front trials with no final promotion status yet, best refusal first."""
        done = {n for n, (status, _) in self.promotions.all().items() if status in FINAL}
        front = [t for t in feasible_front(self.study) if t.number not in done]
        if self.settings.include_not_specific:
            return front
        # A trial whose refusal drop a random direction matches (abliterate controls) is skipped;
        # one never controlled is promoted as before.
        return [t for t in front if t.user_attrs.get("specific") is not False]

    def skipped(self) -> list[FrozenTrial]:
        """Front trials left out because abliterate controls found them not specific."""
        if self.settings.include_not_specific:
            return []
        done = {n for n, (status, _) in self.promotions.all().items() if status in FINAL}
        return [t for t in feasible_front(self.study) if t.number not in done and t.user_attrs.get("specific") is False]

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
                if (self.promotions.get(trial.number) or ("", {}))[0] in FINAL:
                    continue
                status = self.promote(trial)
                if lost.is_set():
                    self.log(f"trial {trial.number}: the lease was lost while working; the next holder re-checks it")
            finished += status in FINAL
        return finished

    def watch(self, poll: float = 30.0) -> None:
        """Promote as the front changes, until the study stops or is complete and fully promoted.

        Trials of dead workers are failed here too (see storage.stale), so a study whose workers
        all died does not hold this loop forever on trials that stay RUNNING."""
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

    def promote(self, trial: FrozenTrial) -> str:
        """Take ``trial`` as far as it goes; returns its status."""
        n = trial.number
        _, details = self.promotions.get(n) or ("confirming", {})
        try:
            if "confirmation" not in details:
                self.promotions.update(n, "confirming")
                confirmation = self.confirm(trial)
                self.promotions.update(n, "confirming" if confirmation["passed"] else "dropped", confirmation=confirmation)
                self.log(f"trial {n}: confirmation refusal {confirmation['refusal']:.3f} vs base {confirmation['base_refusal']:.3f}, "
                         f"KL {confirmation['kl']:.4f}: {'passed' if confirmation['passed'] else 'dropped'}"
                         f"{' (not specific)' if confirmation.get('specific') is False else ''}")
                if not confirmation["passed"]:
                    self._record(trial, "dropped", {"promotion_confirmation": confirmation})
                    return "dropped"
            elif not details["confirmation"]["passed"]:
                return "dropped"
            checkpoint = self.export(trial)
            self.promotions.update(n, "sweeping", checkpoint=str(checkpoint))
            baseline = self.sweep(self.base_model(), f"baseline:{self.config.model}:{self.runner.fingerprint()}", "baseline")
            candidate = self.sweep(str(checkpoint), f"{self.name}/trial/{n}:{self.runner.fingerprint()}", f"trial-{n}")
        except AblationError as error:
            self.promotions.update(n, self.promotions.get(n)[0], error=str(error))
            raise
        look, tested_before = self.looks(n)
        result = gate([TaskCounts(task, *candidate.get(task, (0, 0)), *baseline.get(task, (0, 0))) for task in self.runner.tasks()],
                      self.settings.rule, look, tested_before)
        status = "accepted" if result.accepted else "no_lift"
        self.promotions.update(n, status, gate=result.as_dict(), runner=self.runner.name, attempts=self.settings.attempts)
        self._restate(checkpoint, status, self.promotions.get(n)[1])
        confirmation = self.promotions.get(n)[1]["confirmation"]
        self._record(trial, status, {"promotion_reason": result.reason, "promotion_confirmation": confirmation}, result)
        self.log(f"trial {n}: {status} ({result.reason})")
        if result.accepted and self.settings.stop_at_first_lift:
            self.study.set_user_attr(STOP_ATTR, {"trial": n, "reason": f"trial {n} accepted: {result.reason}"})
            self.log(f"stopping study {self.name!r}: workers finish their trial and exit")
        return status

    def looks(self, trial_number: int) -> tuple[int, int]:
        """(this candidate's place among the study's gated candidates, task tests before it): every
        earlier gate decision counts, so the study-wide rule spends alpha once per candidate."""
        earlier = [details["gate"] for number, (_, details) in self.promotions.all().items()
                   if number != trial_number and "gate" in details]
        return len(earlier) + 1, sum(len(g["tasks"]) for g in earlier)

    def confirm(self, trial: FrozenTrial) -> dict:
        """Re-score on the held-out confirmation prompts with longer answers, against the base model."""
        bench = self._load()
        outcome = bench["scorer"].run(self._candidate(trial))
        refusal = outcome.values[0]
        passed = outcome.feasible and refusal <= bench["base_refusal"] - self.settings.margin
        found = {"refusal": refusal, "kl": outcome.kl, "feasible": outcome.feasible, "base_refusal": bench["base_refusal"],
                 "margin": self.settings.margin, "passed": bool(passed),
                 "refusal_rate": outcome.refusal.rate("refusal") if outcome.refusal else None}
        if passed and self.settings.controls and "specific" not in trial.user_attrs:
            from search.analysis import record_controls, run_controls, verdict

            result = run_controls(bench["loaded"], self.config, self.config.prompts(), trial.params, bench["directions"],
                                  self.settings.controls, holdout=False)
            record_controls(self.storage, self.study, trial, result)
            found["specific"] = result["specificity"]["specific"]
            self.log(f"trial {trial.number}: controls: {verdict(result)}")
        if found.get("specific", trial.user_attrs.get("specific")) is False and not self.settings.include_not_specific:
            found |= {"passed": False, "specific": False}
        return found

    def export(self, trial: FrozenTrial) -> Path:
        """The candidate's checkpoint folder with its model card and reproduction record, written
        atomically (an existing one is complete)."""
        from search.checkpoint import export_loaded

        target = self.root / f"trial-{trial.number}"
        if (target / "config.json").exists():
            return target
        bench = self._load()
        export_loaded(bench["loaded"], bench["directions"], self.name, self.config, trial, self.promotions.get(trial.number),
                      target, overwrite=True)
        self.log(f"trial {trial.number}: checkpoint {target}")
        return target

    def base_model(self) -> str:
        """A folder runners can load or serve: the study's model itself, or an export of it."""
        from ablation.export import export_checkpoint

        if Path(self.config.model).is_dir():
            return str(Path(self.config.model).resolve())
        target = self.root / "base"
        if not (target / "config.json").exists():
            export_checkpoint(self._load()["loaded"], target, overwrite=True)
        return str(target)

    def sweep(self, model: str, key: str, label: str) -> dict[str, tuple[int, int]]:
        """task -> (passes, valid attempts) of ``model``, running only what is not stored yet.

        The baseline is shared: under its own lease, so two promoters do not run it together.
        """
        store = SweepStore(self.storage.engine, key)
        lease = f"sweep:{key}"
        while not self.leases.acquire(lease):
            self.log(f"  {label}: another promoter is running this sweep; waiting")
            time.sleep(max(1.0, self.settings.lease_seconds / 10))
        with self.leases.held(lease):
            self.log(f"  {label} sweep ({self.runner.name}, {self.settings.attempts} attempts per task)")
            return run_sweep(self.runner, model, self.settings.attempts, store, self.root / "sweeps" / label,
                             self.settings.max_invalid, self.log)

    # ---- helpers ---------------------------------------------------------------------------

    def _candidate(self, trial: FrozenTrial):
        from search.space import candidate_from_params

        return candidate_from_params(trial.params, self._load()["num_layers"])

    def _load(self) -> dict:
        if self._bench is None:
            from ablation.loading import load_model
            from objectives.refusal import ChatFormat, make_proxy
            from search.trial import TrialRunner, directions_from_bytes, directions_key
            from storage.cache import ArtifactCache

            payload = ArtifactCache(self.storage.engine, self.name, self.owner).get(directions_key(self.config.space))
            if payload is None:
                raise StorageError(f"study {self.name!r} has no cached directions yet; run a worker first")
            directions = directions_from_bytes(payload)
            config, prompts = self.config, self.config.prompts()
            chat = ChatFormat(enable_thinking=config.enable_thinking)
            loaded = load_model(config.model, config.dtype, self.settings.device, config.device_map, config.trust_remote_code)
            proxy = make_proxy(config.proxy, self.settings.confirm_tokens or 2 * config.max_new_tokens, config.batch_size, chat,
                               config.judge_settings(self.settings.device).build())
            scorer = TrialRunner(loaded, directions, prompts["harmful", "confirmation"], prompts["harmless", "confirmation"],
                                 proxy, config.kl_cap, config.kl_tokens, chat, config.batch_size)
            base_refusal = proxy.score(loaded, prompts["harmful", "confirmation"]).value
            self._bench = {"loaded": loaded, "directions": directions, "scorer": scorer, "baker": scorer.baker,
                           "base_refusal": base_refusal, "num_layers": next(iter(directions.values())).shape[0]}
        return self._bench

    def _restate(self, checkpoint: Path, status: str, details: dict) -> None:
        """The verdict in the checkpoint's model card and record too (checkpoints exported by an
        older version have no record and are left as they are)."""
        from search.checkpoint import restate_promotion
        from search.reproduce import REPRO_FILE

        if (checkpoint / REPRO_FILE).is_file():
            restate_promotion(checkpoint, status, details)

    def _record(self, trial: FrozenTrial, status: str, attrs: dict, result: GateResult | None = None) -> None:
        """The verdict on the trial itself: user attrs and a dashboard note section."""
        values = {"promotion": status, **attrs}
        if result is not None:
            values |= {"promotion_p_min": min((t.p for t in result.tasks), default=1.0), "promotion_pooled_p": result.pooled_p}
        set_trial_user_attrs(self.storage, trial._trial_id, values)
        append_trial_note(self.storage, self.study._study_id, trial._trial_id, "Promotion", promotion_note(status, attrs, result))


def promotion_note(status: str, attrs: dict, result: GateResult | None) -> str:
    """Markdown for the trial's dashboard note: the decision and the per-task table."""
    lines = [f"**{status}**"]
    if "promotion_confirmation" in attrs:
        c = attrs["promotion_confirmation"]
        lines.append(f"confirmation refusal {c['refusal']:.3f} vs base {c['base_refusal']:.3f} (margin {c['margin']}), KL {c['kl']:.4f}")
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
    """Every promotion of the study with what each step found (for ``abliterate report``)."""
    load(storage, study_name)  # a one-line error for an unknown study
    rows = []
    for number, (status, details) in PromotionStore(storage.engine, study_name).all().items():
        rows.append({"trial": number, "status": status, **details})
    return rows
