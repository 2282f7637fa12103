"""How the promoter confirms, sweeps and gates candidates (:class:`PromotionSettings`), checked
when made: a setting that cannot work (a NaN margin, a lease that lapses at once) is refused
before anything runs, not found out as a verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

from abliterate.objectives.gate import GateRule

# Random directions of the specificity controls run in each candidate's confirmation: each costs
# one refusal pass on the evaluation prompts, about a trial, where the agent sweep after it costs
# hundreds of attempts; ten give a band whose spread is known to within about a quarter.
DEFAULT_CONTROLS = 10
# A holder renews its lease every third of it, each time one database round trip: a shorter lease
# can lapse between two renewals, and a second promoter then takes the same candidate.
MIN_LEASE_SECONDS = 1.0
MAX_SECONDS = 7 * 86400  # leases and polls: a week (a year would overflow no clock, but helps no one)


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
    include_not_specific: bool = False  # also promote candidates the specificity controls found not specific
    controls: int = DEFAULT_CONTROLS  # random directions of the specificity controls in confirmation (0: none run)

    def __post_init__(self):
        def whole(name: str, least: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < least:
                raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")

        whole("attempts", 1)
        whole("max_invalid", 0)
        whole("controls", 0)
        if self.confirm_tokens is not None:
            whole("confirm_tokens", 1)
        if not (isinstance(self.margin, Real) and 0 <= self.margin <= 1):  # NaN fails too
            raise ValueError(f"margin must be between 0 and 1 (a difference of refusal rates), got {self.margin}")
        if not (isinstance(self.lease_seconds, Real) and MIN_LEASE_SECONDS <= self.lease_seconds <= MAX_SECONDS):
            raise ValueError(f"lease_seconds must be between {MIN_LEASE_SECONDS:g} and {MAX_SECONDS}, got {self.lease_seconds}")
        if not isinstance(self.rule, GateRule):
            raise ValueError(f"rule must be a GateRule, got {self.rule!r}")
