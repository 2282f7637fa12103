"""The promotion gate: does a candidate pass more agent tasks than the baseline model?

Per task, a one-sided exact test of the candidate's pass count against the baseline's, on the
table ``[[candidate_pass, baseline_pass], [candidate_fail, baseline_fail]]`` (columns are the
arms), so ``alternative="greater"`` asks for a lift. Fisher's test is the default; Boschloo's
is uniformly more powerful for fixed arm sizes. Across tasks: Holm and Benjamini-Hochberg
adjusted values beside the raw ones, and a pooled one-sided Cochran-Mantel-Haenszel test.

Decision rules (``GateRule.rule``):

* ``any`` (default, the users' own criterion): accept when some task with at least
  ``min_attempts`` attempts per arm has raw p < alpha. Uncorrected: with many tasks its false
  positive rate per candidate is well above alpha, and the result says so.
* ``holm`` / ``bh``: accept when some task's adjusted p < alpha (these hold alpha under the null).
* ``cmh``: accept when the pooled test's p < alpha (most power for a small uniform lift), pooling
  only the eligible tasks. It is a normal approximation: with only a few informative tasks it
  can exceed alpha (one task at N = 10: about 12 % at alpha 0.10, ``bench/gate_null.py``), and
  the result flags that.
* ``study``: holds alpha over the whole study, not per candidate: each of the ``candidates``
  planned candidates is tested at alpha / candidates with Holm over its tasks (a union bound, so
  it holds whatever the candidates share, the baseline sweep included); after that many, no
  candidate can be accepted. The other rules are per candidate and uncorrected across
  candidates; from the second candidate on the result says how many have been tested.

The rule is p < alpha, strictly, and float rounding never decides it. Fisher's p-values are
computed exactly as fractions (``exact_p``), adjusted exactly (Holm multiplies, BH divides by a
rank) and compared with alpha read as the decimal it was typed as (0.10 is 1/10, not the binary
float just above it): 3/8 against 0/8 gives exactly 1/10 and is not accepted at alpha 0.10.
Boschloo's p and the pooled p are not rational (a numerical maximum, a normal tail); they must
be below alpha by more than a relative ``TOLERANCE`` (1e-9), so a value that equals alpha up to
rounding is never accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from numbers import Integral, Real

import numpy as np
from scipy.stats import boschloo_exact, norm
from statsmodels.stats.contingency_tables import StratifiedTable

TESTS = ("fisher", "boschloo")
RULES = ("any", "holm", "bh", "cmh", "study")
FEW_TASKS = 5  # below this many informative tasks the pooled test is flagged as approximate
TOLERANCE = 1e-9  # relative margin below alpha that an irrational (float) p-value must clear


@dataclass(frozen=True)
class TaskCounts:
    """Valid attempts of one task in each arm and how many passed."""

    task: str
    candidate_pass: int
    candidate_n: int
    baseline_pass: int
    baseline_n: int

    def table(self) -> list[list[int]]:
        return [[self.candidate_pass, self.baseline_pass],
                [self.candidate_n - self.candidate_pass, self.baseline_n - self.baseline_pass]]


def fisher_p(counts: TaskCounts) -> Fraction:
    """Fisher's one-sided p as an exact fraction: P(X >= candidate_pass) for X hypergeometric
    (candidate_n draws from candidate_n + baseline_n attempts holding all the passes)."""
    total, passes, drawn = counts.candidate_n + counts.baseline_n, counts.candidate_pass + counts.baseline_pass, counts.candidate_n
    tail = sum(math.comb(passes, k) * math.comb(total - passes, drawn - k)
               for k in range(counts.candidate_pass, min(passes, drawn) + 1))
    return Fraction(tail, math.comb(total, drawn))


def exact_p(counts: TaskCounts, test: str = "fisher") -> Fraction | float:
    """The p-value the decision uses: an exact fraction for Fisher, scipy's float for Boschloo."""
    if counts.candidate_n == 0 or counts.baseline_n == 0:
        return Fraction(1)  # an arm with no valid attempt carries no evidence
    if test == "fisher":
        return fisher_p(counts)
    if test == "boschloo":
        p = boschloo_exact(counts.table(), alternative="greater").pvalue
        return 1.0 if math.isnan(p) else min(1.0, float(p))
    raise ValueError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")


def lift_p(counts: TaskCounts, test: str = "fisher") -> float:
    """One-sided p-value for "the candidate passes this task more often than the baseline"."""
    return float(exact_p(counts, test))


def below(p: Fraction | float, alpha: float) -> bool:
    """The rule p < alpha, decided exactly for a fraction (alpha read as the decimal typed) and
    with a relative margin of ``TOLERANCE`` for a float."""
    if isinstance(p, Fraction):
        return p < Fraction(repr(float(alpha)))
    return p < alpha * (1 - TOLERANCE)


def smallest_p(candidate_n: int, baseline_n: int, test: str = "fisher") -> float:
    """The best p any outcome can give: every candidate attempt passes, every baseline one fails.

    For Fisher with N attempts per arm this is 1 / C(2N, N).
    """
    return lift_p(TaskCounts("", candidate_n, candidate_n, 0, baseline_n), test)


def adjust(pvalues: Sequence, method: str) -> list:
    """Holm (``holm``) or Benjamini-Hochberg (``bh``) adjusted p-values, in the same order.

    Plain arithmetic on the values given, so fractions stay exact and floats give the same
    values as statsmodels' ``multipletests`` (the tests check).
    """
    if method not in ("holm", "bh"):
        raise ValueError(f"unknown adjustment {method!r}; use holm or bh")
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [None] * m
    if method == "holm":  # step down: m, m - 1, ... times the sorted values, running maximum
        running = 0
        for rank, i in enumerate(order):
            running = max(running, pvalues[i] * (m - rank))
            adjusted[i] = min(running, 1)
    else:  # step up: m / rank times the sorted values, running minimum from the largest
        running = 1
        for rank in range(m, 0, -1):
            i = order[rank - 1]
            running = min(running, pvalues[i] * m / rank)
            adjusted[i] = running
    return adjusted


def pooled_lift(counts: Sequence[TaskCounts]) -> tuple[float, float | None]:
    """One-sided Cochran-Mantel-Haenszel p-value for a lift common to all tasks, and the pooled
    (Mantel-Haenszel) odds ratio; tasks where one arm has no valid attempt are left out.

    Returns (1.0, None) when no task carries information (every task all-pass or all-fail).
    """
    tables = [c.table() for c in counts if c.candidate_n and c.baseline_n]
    if not tables:
        return 1.0, None
    stratified = StratifiedTable(np.array(tables, dtype=float).transpose(1, 2, 0))
    excess = sum(t[0][0] - (t[0][0] + t[0][1]) * (t[0][0] + t[1][0]) / (sum(map(sum, t))) for t in tables)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(stratified.test_null_odds(correction=False).statistic)
        ratio = float(stratified.oddsratio_pooled)
    if not math.isfinite(statistic):
        return 1.0, None
    z = math.copysign(math.sqrt(max(statistic, 0.0)), excess)
    return float(norm.sf(z)), (ratio if math.isfinite(ratio) else None)


@dataclass(frozen=True)
class GateRule:
    """How a candidate is accepted; the defaults reproduce the users' criterion.

    ``candidates`` is the study's planned number of gated candidates; only the ``study`` rule
    uses it (each candidate gets alpha / candidates, Holm over its tasks).
    """

    rule: str = "any"
    alpha: float = 0.10
    min_attempts: int = 3
    test: str = "fisher"
    candidates: int = 5

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown gate rule {self.rule!r}; use one of {', '.join(RULES)}")
        if self.test not in TESTS:
            raise ValueError(f"unknown test {self.test!r}; use one of {', '.join(TESTS)}")
        if not (isinstance(self.alpha, Real) and 0 < self.alpha < 1):  # NaN fails too
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("min_attempts", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")

    def level(self, look: int = 1) -> float:
        """The alpha one candidate is tested at: all of it for the per-candidate rules; for
        ``study``, alpha / candidates for each of the first ``candidates`` looks and 0 after."""
        if self.rule != "study":
            return self.alpha
        return self.alpha / self.candidates if look <= self.candidates else 0.0


@dataclass(frozen=True)
class TaskResult:
    counts: TaskCounts
    p: float
    p_holm: float
    p_bh: float
    eligible: bool  # both arms have at least min_attempts valid attempts


@dataclass(frozen=True)
class GateResult:
    """Everything the gate computed, and its decision.

    ``look`` is this candidate's place among the study's gated candidates and ``tested`` the
    (candidate, task) pairs tested in the study so far, this candidate's included."""

    rule: GateRule
    tasks: list[TaskResult]
    pooled_p: float
    pooled_odds_ratio: float | None
    accepted: bool
    reason: str
    flags: list[str] = field(default_factory=list)
    look: int = 1
    tested: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def gate(counts: Sequence[TaskCounts], rule: GateRule = GateRule(), look: int = 1, tested_before: int = 0) -> GateResult:
    """Test every task and decide by ``rule``; ``look`` counts this candidate among the study's
    gated ones (1 = the first) and ``tested_before`` the task tests of the earlier ones."""
    exact = [exact_p(c, rule.test) for c in counts]
    eligible = [min(c.candidate_n, c.baseline_n) >= rule.min_attempts for c in counts]
    holm, bh = adjust(exact, "holm"), adjust(exact, "bh")
    tasks = [TaskResult(c, float(p), float(ph), float(pb), e) for c, p, ph, pb, e in zip(counts, exact, holm, bh, eligible)]
    pooled = [c for c, e in zip(counts, eligible) if e]  # the pooled test sees only what the gate counts
    pooled_p, ratio = pooled_lift(pooled)
    flags = []
    short = [c.task for c, e in zip(counts, eligible) if not e]
    if short:
        flags.append(f"{len(short)} task(s) below {rule.min_attempts} valid attempts per arm are not eligible: {', '.join(short[:5])}")
    level = rule.level(look)
    if rule.rule == "cmh":
        informative = sum(0 < c.candidate_pass + c.baseline_pass < c.candidate_n + c.baseline_n for c in pooled)
        if informative < FEW_TASKS:
            flags.append(f"only {informative} eligible task(s) with both passes and fails: the pooled test's normal approximation is loose; prefer the per-task tests")
        accepted = below(pooled_p, level)
        reason = f"pooled CMH p = {pooled_p:.3g} {'<' if accepted else '>='} {level:g} over {len(pooled)} eligible task(s)"
    else:
        values = {"any": exact, "holm": holm, "bh": bh, "study": holm}[rule.rule]
        label = {"any": "raw", "holm": "Holm-adjusted", "bh": "BH-adjusted", "study": "Holm-adjusted"}[rule.rule]
        hits = sorted((v, t.counts.task) for v, t in zip(values, tasks) if t.eligible and below(v, level))
        accepted = bool(hits)
        if accepted:
            reason = f"{len(hits)} task(s) with {label} p < {level:g}; best {hits[0][1]} (p = {float(hits[0][0]):.3g})"
        else:
            best = min((float(v) for v, t in zip(values, tasks) if t.eligible), default=1.0)
            reason = f"no eligible task with {label} p < {level:g} (best {best:.3g})"
        if rule.rule == "any" and len(tasks) > 1:
            flags.append(f"uncorrected: {len(tasks)} tasks tested at alpha {rule.alpha:g} each; see the Holm/BH columns and the pooled test")
    if rule.rule == "study":
        reason += f" (study-wide: candidate {look} of {rule.candidates}, alpha {rule.alpha:g} / {rule.candidates})"
        if look > rule.candidates:
            flags.append(f"the study's alpha is spent: {rule.candidates} candidates were planned and this is candidate {look}")
    elif look > 1:
        flags.append(f"uncorrected across candidates: candidate {look} of the study, {tested_before + len(counts)} task tests so far; "
                     "use --rule study to hold alpha over the whole study")
    return GateResult(rule, tasks, pooled_p, ratio, accepted, reason, flags, look, tested_before + len(counts))


def no_evidence(counts: Sequence[TaskCounts], rule: GateRule) -> str | None:
    """Why ``counts`` hold nothing the gate can decide on: no task has ``rule.min_attempts``
    valid attempts in each arm (its own eligibility), as when every attempt was invalid; None
    when some task has. :func:`gate` would reject such counts, for want of data, not on it."""
    if any(min(c.candidate_n, c.baseline_n) >= rule.min_attempts for c in counts):
        return None
    return (f"no task has {rule.min_attempts} valid attempts in each arm ({sum(c.candidate_n for c in counts)} valid candidate "
            f"and {sum(c.baseline_n for c in counts)} valid baseline attempts over {len(counts)} task(s); the others were invalid)")


# ---- what a design can show at all ------------------------------------------------------------

def best_p(rule: GateRule, attempts: int, tasks: int) -> Fraction | float | None:
    """The smallest decision value any outcome can give with ``attempts`` per arm on ``tasks``
    tasks: every candidate attempt passes and every baseline one fails. None when no task is
    eligible (``attempts`` below ``min_attempts``). Compared with ``rule.level()``."""
    if attempts < rule.min_attempts or tasks < 1:
        return None
    if rule.rule == "cmh":  # each such task adds N/2 to the excess and N^2 / (4 (2N - 1)) to its variance
        return float(norm.sf(math.sqrt(tasks * (2 * attempts - 1))))
    single = exact_p(TaskCounts("", attempts, attempts, 0, attempts), rule.test)
    return single * tasks if rule.rule in ("holm", "study") else single  # BH: all tasks at the best value


def can_pass(rule: GateRule, attempts: int, tasks: int) -> bool:
    """Whether some outcome of the design is accepted (by the first candidate, for ``study``)."""
    best = best_p(rule, attempts, tasks)
    return best is not None and below(best, rule.level(1))


def smallest_passing_n(rule: GateRule, tasks: int, limit: int = 200) -> int | None:
    """The fewest attempts per arm at which some outcome can be accepted; None above ``limit``."""
    return next((n for n in range(rule.min_attempts, limit + 1) if can_pass(rule, n, tasks)), None)


def underpowered(rule: GateRule, attempts: int, tasks: int) -> str | None:
    """Why no outcome of the design can ever be accepted, naming the smallest N that can; None
    when some outcome can."""
    if can_pass(rule, attempts, tasks):
        return None
    if tasks < 1:
        return "there are no tasks to sweep; give the runner at least one task"
    smallest = smallest_passing_n(rule, tasks)
    fix = f"use --attempts {smallest} or more" if smallest else "no N up to 200 can; change the rule or alpha"
    if attempts < rule.min_attempts:
        why = f"no task can be eligible with {attempts} attempts per arm and --min-attempts {rule.min_attempts}"
    else:
        best = best_p(rule, attempts, tasks)
        assert best is not None  # some task, and attempts enough for it to be eligible
        why = (f"with {attempts} attempts per arm on {tasks} task(s), rule {rule.rule} and {rule.test}'s test can never reach "
               f"p < {rule.level(1):g} (the best possible value is {float(best):.3g})")
    return f"{why}; {fix}"
