"""What a study records in Optuna's attrs: every name, and typed views of the values.

This module is the schema: every user-attr name (of a study and of its trials) and the project's
own system-attr names are constants here, and readers and writers go through the views below,
never through a string literal (tests/test_records.py holds the rest of the package to that).
The stored names and JSON shapes never change, so studies made by any earlier version read
back. The promotion state (:class:`Status`, :class:`Confirmation`, :class:`Promotion`) is kept
in the project's own table (storage.promotions) and, for the dashboard, partly on the trial.

Importing this module imports neither Optuna nor torch: the launcher and ``--help`` read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

# ---- study user attrs ----------------------------------------------------------------------
CONFIG = "abliterate"  # the study's settings (search.study.StudyConfig as JSON); marks a study as ours
STOP = "abliterate_stop"  # {"trial", "reason"}: an accepted promotion stopped the study
BASELINE = "abliterate_baseline"  # the base model's figures (search.baseline.measure)
DIRECTIONS_REPORT = "abliterate_directions_report"  # lines on what the computed directions look like
# {"strongest", "writing"}: where the designed first trials were placed (search.trial.strongest_layer,
# and writing_kernel's [peak, falloff] when the study measures it, else None), as fractions of depth
STARTS = "abliterate_starts"

# ---- trial user attrs ----------------------------------------------------------------------
# What a trial measured (search.worker.record): see TrialRecord for each one's meaning.
KL, FEASIBLE, WORKER, EDITED_LAYERS = "kl", "feasible", "worker", "edited_layers"
SECONDS = "seconds_"  # prefix: seconds_total, seconds_kl, ... one per timed step
SECONDS_TOTAL = f"{SECONDS}total"
PRUNED, REFUSAL_AT_LEAST, DOMINATED_BY = "pruned", "refusal_at_least", "dominated_by"
# What settled a trial, cheapest first: KL over the cap; the screen with KL (no refusal pass);
# the refusals counted so far (the pass given up); the whole judged refusal pass.
DECIDERS = ("kl", "screen", "refusals-so-far", "judged")
REFUSAL, REFUSAL_RATE, DEGENERATE_RATE, COUNTS, OVER_REFUSAL = "refusal", "refusal_rate", "degenerate_rate", "counts", "over_refusal"
CAPABILITY_ACCURACY = "capability_accuracy"  # on the capability questions, when that is the third objective
# Where an enqueued candidate came from; a retry of a crashed trial carries these (storage.stale).
STARTING_POINT = "starting_point"  # True on a designed starting point
WARM_START = "warm_start"  # {"storage", "study", "trial", "values", "changed", "dropped", "sampled"}
PROVENANCE = (STARTING_POINT, WARM_START)
# The specificity controls' findings (search.analysis.record_controls).
CONTROLS, SPECIFIC = "controls", "specific"
# The promotion's verdict, copied onto the trial so that the dashboard shows it.
PROMOTION, PROMOTION_CONFIRMATION, PROMOTION_REASON = "promotion", "promotion_confirmation", "promotion_reason"
PROMOTION_P_MIN, PROMOTION_POOLED_P = "promotion_p_min", "promotion_pooled_p"

# ---- trial system attrs of the project's own ------------------------------------------------
RUNNING_ON = "abliterate:running_on"  # [owner, trial number] of the worker running it (search.interrupts)
PARAMS_COMPLETE = "abliterate:params_complete"  # every param of the candidate is recorded (storage.stale)


@dataclass(frozen=True)
class TrialRecord:
    """A trial's user attrs, typed. A field is None (False for the flags) when the trial does
    not have the attr: not finished, over the KL cap (no refusal pass), pruned (no rates), ...

    :meth:`to_attrs` writes exactly the attrs that are set, so ``TrialRecord.from_attrs(a).to_attrs()``
    is ``a`` for any record this project writes.
    """

    kl: float | None = None  # KL drift from the base model (also the second objective)
    feasible: bool | None = None  # within the study's KL cap; None until measured
    worker: str | None = None  # host:pid of the worker that ran it
    edited_layers: tuple[int, ...] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # step -> seconds (``total`` among them)
    refusal: float | None = None  # the refusal objective of a complete refusal pass
    refusal_rate: float | None = None
    degenerate_rate: float | None = None
    counts: dict[str, int] | None = None  # verdict -> prompts
    over_refusal: float | None = None  # refusal rate on the benign-but-edgy prompts
    capability_accuracy: float | None = None  # on the capability questions (objectives.capability), when the third objective
    screen: float | None = None  # the generation-free refusal screen (objectives.screen), when the study runs it
    decided_by: str | None = None  # the measure that settled the trial: one of DECIDERS
    pruned: bool = False  # the refusal pass stopped once the trial could not reach the front
    refusal_at_least: float | None = None  # a pruned trial's lower bound
    dominated_by: int | None = None  # the finished trial that dominates a pruned one
    starting_point: bool = False
    warm_start: dict | None = None
    controls: dict | None = None  # search.analysis.controls_summary
    specific: bool | None = None  # the controls' verdict; None: not controlled
    promotion: Status | None = None
    promotion_confirmation: Confirmation | None = None
    promotion_reason: str | None = None
    promotion_p_min: float | None = None
    promotion_pooled_p: float | None = None

    @classmethod
    def of(cls, trial) -> TrialRecord:
        """The record of ``trial`` (an Optuna FrozenTrial, or anything with ``user_attrs``)."""
        return cls.from_attrs(trial.user_attrs)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        names = {f.name for f in fields(cls)} - {"seconds", "edited_layers", "promotion", "promotion_confirmation"}
        values: dict[str, Any] = {name: attrs[name] for name in names if name in attrs}
        values["seconds"] = {k.removeprefix(SECONDS): v for k, v in attrs.items() if k.startswith(SECONDS)}
        if EDITED_LAYERS in attrs:
            values["edited_layers"] = tuple(attrs[EDITED_LAYERS])
        if PROMOTION in attrs:
            values["promotion"] = Status(attrs[PROMOTION])
        if PROMOTION_CONFIRMATION in attrs:
            values["promotion_confirmation"] = Confirmation.from_record(attrs[PROMOTION_CONFIRMATION])
        return cls(**values)

    def to_attrs(self) -> dict[str, Any]:
        """The user attrs this record is stored as (only those set)."""
        attrs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seconds":
                attrs |= {f"{SECONDS}{k}": v for k, v in value.items()}
            elif value is None or value is False and f.name in ("pruned", "starting_point"):
                continue
            elif f.name == "edited_layers":
                attrs[f.name] = list(value)
            elif f.name == "promotion":
                attrs[f.name] = str(value)
            elif f.name == "promotion_confirmation":
                attrs[f.name] = value.to_record()
            else:
                attrs[f.name] = value
        return attrs

    @property
    def seconds_total(self) -> float | None:
        return self.seconds.get("total")

    @property
    def not_specific(self) -> bool:
        """Whether the controls found the trial not specific (not merely: not controlled)."""
        return self.specific is False


def controls_attrs(summary: dict) -> dict[str, Any]:
    """The user attrs that record a trial's specificity controls (``summary``: their
    search.analysis.controls_summary)."""
    return TrialRecord(controls=summary, specific=summary["specific"]).to_attrs()


def verdict_attrs(status: Status, confirmation: Confirmation | None, reason: str | None = None, p_min: float | None = None,
                  pooled_p: float | None = None) -> dict[str, Any]:
    """The user attrs that put a promotion's verdict on its trial."""
    return TrialRecord(promotion=status, promotion_confirmation=confirmation, promotion_reason=reason, promotion_p_min=p_min,
                       promotion_pooled_p=pooled_p).to_attrs()


# ---- the promotion state -------------------------------------------------------------------

class Status(StrEnum):
    """Where a promoted candidate stands (search.promoter). Stored as these very strings."""

    CONFIRMING = "confirming"  # being re-scored on the held-out confirmation prompts
    DROPPED = "dropped"  # the confirmation did not beat the base model, or the controls found it not specific
    SWEEPING = "sweeping"  # checkpoint written, agent attempts being run (or a sweep without a verdict)
    ACCEPTED = "accepted"  # the gate found a lift
    NO_LIFT = "no_lift"  # the gate found none
    SKIPPED = "skipped"  # in the report only, never stored: not specific before any promotion

    @property
    def final(self) -> bool:
        """Whether nothing more is done for the candidate (under the settings that decided it)."""
        return self in FINAL


FINAL = frozenset({Status.DROPPED, Status.ACCEPTED, Status.NO_LIFT})


@dataclass(frozen=True)
class Confirmation:
    """A candidate's confirmation (search.promoter.Promoter.confirm): its refusal and KL on the
    held-out confirmation prompts against the base model's refusal less ``margin``.

    ``beats_base``: the confirmation's own finding; ``passed``: that, and specific (or not
    controlled, or promoted as not specific on request). ``controls`` is None when no controls
    ran (a candidate that did not beat the base model, or a promotion older than them); then
    ``specific`` is None too. A record may lack ``feasible`` or (older versions) ``beats_base``:
    they read back as None, and are written back only when set.
    """

    refusal: float
    kl: float
    base_refusal: float
    margin: float
    passed: bool
    feasible: bool | None = None
    beats_base: bool | None = None
    refusal_rate: float | None = None
    controls: dict | None = None
    specific: bool | None = None
    capability: dict | None = None  # objectives.capability.CapabilityCheck.as_dict(), for a candidate that beat the base

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Confirmation:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def to_record(self) -> dict[str, Any]:
        """As stored: ``controls`` and ``specific`` only when the controls ran (``specific`` then
        stays, even None: controls that were not run say why)."""
        record = {"refusal": self.refusal, "kl": self.kl, "feasible": self.feasible, "base_refusal": self.base_refusal,
                  "margin": self.margin, "beats_base": self.beats_base, "passed": self.passed, "refusal_rate": self.refusal_rate}
        for name in ("feasible", "beats_base"):
            if record[name] is None:  # a record without it keeps its shape
                del record[name]
        if self.controls is not None:
            record |= {"controls": self.controls, "specific": self.specific}
        if self.capability is not None:
            record["capability"] = self.capability
        return record

    @property
    def only_not_specific(self) -> bool:
        """Whether it was failed by the specificity controls alone."""
        return bool(self.beats_base) and self.specific is False

    def passing(self) -> Confirmation:
        """This confirmation passed after all (a not-specific candidate promoted on request)."""
        return replace(self, passed=True)


@dataclass(frozen=True)
class Promotion:
    """One candidate's promotion as storage.promotions keeps it: a status and its findings."""

    status: Status
    confirmation: Confirmation | None = None
    checkpoint: str | None = None  # the exported checkpoint's folder
    gate: dict | None = None  # objectives.gate.GateResult.as_dict(): the decision, per-task counts and p-values
    runner: str | None = None
    attempts: int | None = None  # per task and arm
    error: str | None = None  # why the last step stopped (a runner failure, no verdict)
    no_verdict: int = 0  # sweeps that gave the gate nothing to decide on

    @classmethod
    def from_record(cls, status: str, details: Mapping[str, Any]) -> Promotion:
        names = {f.name for f in fields(cls)} - {"status", "confirmation"}
        confirmation = details.get("confirmation")
        return cls(Status(status), None if confirmation is None else Confirmation.from_record(confirmation),
                   **{k: v for k, v in details.items() if k in names})

    def to_record(self) -> tuple[str, dict[str, Any]]:
        """(status, details) as stored: the details hold only the findings there are."""
        return str(self.status), self.details

    @property
    def details(self) -> dict[str, Any]:
        details = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("status", "confirmation", "no_verdict")}
        details = {k: v for k, v in details.items() if v is not None}
        if self.confirmation is not None:
            details["confirmation"] = self.confirmation.to_record()
        if self.no_verdict:
            details["no_verdict"] = self.no_verdict
        return details

    def settled(self, include_not_specific: bool = False) -> bool:
        """Whether it needs nothing more under these settings: a final status, except a candidate
        dropped only for being not specific when ``include_not_specific`` asks for it."""
        return self.status.final and not (include_not_specific and self.status == Status.DROPPED
                                           and self.confirmation is not None and self.confirmation.only_not_specific)
