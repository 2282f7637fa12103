"""What a promotion design can show, before any agent run: false acceptance, power, smallest N.

A design is a gate rule (``objectives.gate.GateRule``), N attempts per task and arm, a number
of tasks and a number of candidates. Every figure uses the gate's own exact decisions: per
outcome (candidate passes, baseline passes) of one task, the accept / reject verdict comes from
``gate.exact_p`` and ``gate.below``, so a figure never counts an outcome the gate would reject.

Per-task rules whose verdict is "some task alone clears a threshold" (``any``, ``holm``,
``study``) are computed exactly, since tasks are independent given their pass rates; ``bh`` and
``cmh`` depend on all tasks together and are simulated (the figure comes with its standard
error). Candidates of one study share one baseline sweep, so "over all candidates" is computed
over the baseline's outcomes, not as if candidates were independent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from numbers import Integral

import numpy as np
from scipy.stats import binom, norm

from abliterate.objectives.gate import TOLERANCE, GateRule, TaskCounts, below, can_pass, exact_p, smallest_passing_n

EXACT_RULES = ("any", "holm", "study")
POWER_TARGET = 0.8
# What plan computes at all (plan_problem), from timings of whole plans on a shared 2-core CPU.
# The exact p-value table holds (N + 1)^2 outcomes: Fisher's fractions grow with N (rule any,
# 20 tasks: 1 s at N = 200, 6 s at 400, 70 s at 800); each Boschloo value is a scipy
# maximisation of a few ms (4 s at N = 20, 8 s at 30, 16 s at 40; N = 200 about half an hour).
MAX_ATTEMPTS = {"fisher": 400, "boschloo": 30}
MAX_TASKS = 1000  # terminal-bench 2 has 89
MAX_STUDIES = 1_000_000  # the standard error of a simulated share is below 0.0005 there
# Binomial draws of a simulated plan (bh, cmh; see plan_problem): 9.7e7 took 15 s and 340 MB
# (cmh, 89 tasks, 60,000 studies); memory grows with studies x tasks (1e6 x 20: 0.9 GB).
MAX_SIMULATED = 10**8


@lru_cache(maxsize=64)
def _p_table(attempts: int, test: str) -> tuple[tuple, ...]:
    """Exact p of every outcome (a candidate passes, b baseline passes) with N per arm; Fisher's
    by suffix sums of the hypergeometric terms per total of passes (the same fractions as
    ``gate.fisher_p``, in O(N^2))."""
    if test == "fisher":
        n, whole = attempts, math.comb(2 * attempts, attempts)
        table: list[list[Fraction | None]] = [[None] * (n + 1) for _ in range(n + 1)]
        for passes in range(2 * n + 1):
            tail = 0
            for a in range(min(passes, n), max(0, passes - n) - 1, -1):
                tail += math.comb(passes, a) * math.comb(2 * n - passes, n - a)
                table[a][passes - a] = Fraction(tail, whole)
        return tuple(map(tuple, table))
    return tuple(tuple(exact_p(TaskCounts("", a, attempts, b, attempts), test) for b in range(attempts + 1))
                 for a in range(attempts + 1))


@lru_cache(maxsize=64)
def _bh_table(attempts: int, test: str, tasks: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(rank, ok) for :func:`decide` under ``bh``: ``rank[a, b]`` is outcome (a, b)'s place among
    the distinct p-values, ``ok[r, j - 1]`` whether the r-th of them times tasks / j is below
    ``level``, decided as ``gate.below`` decides it: exactly for fractions, with its tolerance for
    floats."""
    table = _p_table(attempts, test)
    values = sorted({p for row in table for p in row})
    index = {p: i for i, p in enumerate(values)}
    rank = np.array([[index[p] for p in row] for row in table])
    ranks = np.arange(1, tasks + 1)
    if isinstance(values[0], Fraction):  # v * tasks / j < a exactly when j > v * tasks / a
        a = Fraction(repr(float(level)))
        first = np.array([min(math.floor(v * tasks / a) + 1, tasks + 1) for v in values])
        ok = ranks[None, :] >= first[:, None]
    else:  # the same float operations as below(v * tasks / j, level)
        ok = np.array(values, dtype=float)[:, None] * tasks / ranks[None, :] < level * (1 - TOLERANCE)
    return rank, ok


def task_accepts(rule: GateRule, attempts: int, tasks: int, look: int = 1) -> np.ndarray:
    """[a, b] -> whether that outcome of one task alone gets the candidate accepted, for the
    rules decided task by task (``any``; ``holm`` / ``study``, whose best adjusted value is
    tasks x the smallest p)."""
    if rule.rule not in EXACT_RULES:
        raise ValueError(f"rule {rule.rule} is not decided task by task")
    scale = 1 if rule.rule == "any" else tasks
    level = rule.level(look)
    ok = attempts >= rule.min_attempts
    return np.array([[ok and below(p * scale, level) for p in row] for row in _p_table(attempts, rule.test)], dtype=bool)


def decide(rule: GateRule, attempts: int, cand: np.ndarray, base: np.ndarray, look: int = 1) -> np.ndarray:
    """The gate's verdict on many candidates at once: ``cand`` and ``base`` are [C, T] pass counts
    out of ``attempts`` per arm. Same decisions as ``gate.gate`` (the tests check)."""
    cand, base = np.asarray(cand), np.asarray(base)
    tasks = cand.shape[1]
    if attempts < rule.min_attempts:
        return np.zeros(len(cand), dtype=bool)
    level = rule.level(look)
    if rule.rule in EXACT_RULES:
        return task_accepts(rule, attempts, tasks, look)[cand, base].any(axis=1)
    if rule.rule == "bh":  # accepted iff the j-th smallest p times T / j is below alpha for some j
        rank, ok = _bh_table(attempts, rule.test, tasks, level)
        ordered = np.sort(rank[cand, base], axis=1)
        return ok[ordered, np.arange(tasks)].any(axis=1)
    n, total_pass = 2 * attempts, cand + base  # cmh, by the formula the tests check against statsmodels
    excess = (cand - attempts * total_pass / n).sum(axis=1)
    variance = (attempts * attempts * total_pass * (n - total_pass) / (n * n * (n - 1))).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(variance > 0, norm.sf(excess / np.sqrt(variance)), 1.0)
    return p < level * (1 - 1e-9) if level > 0 else np.zeros(len(cand), dtype=bool)


def simulate_null(rule: GateRule, tasks: int, attempts: int, candidates: int = 2000, seed: int = 0,
                  rates=None) -> float:
    """Share of simulated candidates the rule accepts when the candidate is exactly as good as
    the baseline. Task pass rates are drawn uniformly in [0.1, 0.9] per candidate unless given;
    both arms share them."""
    rng = np.random.default_rng(seed)
    shape = (candidates, tasks)
    task_rates = np.broadcast_to(rates, shape) if rates is not None else rng.uniform(0.1, 0.9, size=shape)
    cand, base = rng.binomial(attempts, task_rates), rng.binomial(attempts, task_rates)
    return float(decide(rule, attempts, cand, base).mean())


@dataclass(frozen=True)
class Design:
    """One promotion design and the effect it should find."""

    rule: GateRule
    tasks: int
    attempts: int
    base_rate: float = 0.4
    lift: float = 0.3
    on: str = "one"  # the lift is on one task or on all of them

    def __post_init__(self):
        for name in ("tasks", "attempts"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("base_rate", "lift"):
            if not 0 <= getattr(self, name) <= 1:  # NaN fails too
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.base_rate + self.lift > 1 + 1e-12:  # a pass rate above 1 would be clipped: the lift asked for is not the one computed
            raise ValueError(f"a lift of {self.lift:g} on a base rate of {self.base_rate:g} is a pass rate above 1; "
                             f"the largest lift on that base rate is {1 - self.base_rate:g}")
        if self.on not in ("one", "all"):
            raise ValueError(f"on must be one or all, got {self.on!r}")

    def rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-task pass rates of (a better candidate, the baseline)."""
        base = np.full(self.tasks, self.base_rate)
        better = base.copy()
        better[: 1 if self.on == "one" else self.tasks] += self.lift
        return np.clip(better, 0.0, 1.0), base


def _pmf(attempts: int, rates: np.ndarray) -> np.ndarray:
    return binom.pmf(np.arange(attempts + 1)[None, :], attempts, rates[:, None])  # [T, N + 1]


def exact_acceptance(rule: GateRule, attempts: int, cand_rates: np.ndarray, base_rates: np.ndarray,
                     candidates: int = 1) -> float:
    """P(some of ``candidates`` candidates, all with ``cand_rates``, is accepted), sharing one
    baseline sweep, for the rules decided task by task. Exact: given the baseline's outcome
    every task of every candidate is independent."""
    accepts = task_accepts(rule, attempts, len(base_rates)).astype(float)
    if not accepts.any():
        return 0.0  # exactly: 1 - a product of ones would leave rounding behind
    pc, pb = _pmf(attempts, cand_rates), _pmf(attempts, base_rates)
    reject_given_b = 1.0 - pc @ accepts  # [T, b]: one candidate's task is not a hit
    none = np.prod((pb * reject_given_b ** candidates).sum(axis=1))
    return float(1.0 - none)


def simulated_acceptance(rule: GateRule, attempts: int, cand_rates: np.ndarray, base_rates: np.ndarray,
                         candidates: int = 1, studies: int = 20000, seed: int = 0) -> tuple[float, float]:
    """The same probability by simulation (any rule), with its standard error. Rates are [T],
    or [studies, T] for rates that differ between simulated studies."""
    rng = np.random.default_rng(seed)
    shape = (studies, np.shape(base_rates)[-1])
    base = rng.binomial(attempts, base_rates, size=shape)
    hit = np.zeros(studies, dtype=bool)
    for look in range(1, candidates + 1):
        cand = rng.binomial(attempts, cand_rates, size=shape)
        hit |= decide(rule, attempts, cand, base, look)
    share = float(hit.mean())
    return share, math.sqrt(max(share * (1 - share), 1e-12) / studies)


def acceptance(rule: GateRule, attempts: int, cand_rates, base_rates, candidates: int = 1,
               studies: int = 20000, seed: int = 0) -> dict:
    """{"value", "method" ("exact" or "simulated"), "se"}: exact where the rule allows it."""
    cand_rates, base_rates = np.asarray(cand_rates, dtype=float), np.asarray(base_rates, dtype=float)
    if rule.rule in EXACT_RULES and (rule.rule != "study" or candidates <= rule.candidates):
        return {"value": exact_acceptance(rule, attempts, cand_rates, base_rates, candidates), "method": "exact", "se": 0.0}
    value, se = simulated_acceptance(rule, attempts, cand_rates, base_rates, candidates, studies, seed)
    return {"value": value, "method": "simulated", "se": se}


def smallest_n_for_power(design: Design, candidates: int = 1, target: float = POWER_TARGET, limit: int = 60,
                         studies: int = 4000) -> int | None:
    """The fewest attempts per arm whose power reaches ``target``; None if none up to ``limit``."""
    start = smallest_passing_n(design.rule, design.tasks, limit)
    if start is None:
        return None
    for attempts in range(start, limit + 1):
        better, base = Design(design.rule, design.tasks, attempts, design.base_rate, design.lift, design.on).rates()
        if acceptance(design.rule, attempts, better, base, 1, studies)["value"] >= target:
            return attempts
    return None


def _n_limit(test: str) -> int:
    """Up to which N :func:`plan` looks for the smallest N with the power target."""
    return 60 if test == "fisher" else 20  # Boschloo's tables cost scipy seconds per N


def plan_problem(design: Design, candidates: int = 1, studies: int = 20000) -> str | None:
    """Why :func:`plan` will not compute this design (its cost is out of proportion, see
    ``MAX_ATTEMPTS`` and the others), naming the limit; None when it will."""
    rule, tasks = design.rule, design.tasks
    if not (isinstance(candidates, Integral) and isinstance(studies, Integral) and candidates >= 1 and studies >= 1):
        return f"candidates and studies must be whole numbers of at least 1, got {candidates!r} and {studies!r}"
    if design.attempts > MAX_ATTEMPTS[rule.test]:
        return (f"plan computes designs up to N = {MAX_ATTEMPTS[rule.test]} attempts per arm with {rule.test}'s test "
                f"(its exact table of (N + 1)^2 outcomes takes seconds there and minutes to hours beyond); got --attempts {design.attempts}")
    if tasks > MAX_TASKS:
        return f"plan computes designs up to {MAX_TASKS} tasks; got --tasks {tasks}"
    if studies > MAX_STUDIES:
        return f"--studies is at most {MAX_STUDIES:,} (a simulated share's standard error is below 0.0005 there); got {studies:,}"
    simulated = rule.rule not in EXACT_RULES or (rule.rule == "study" and candidates > rule.candidates)
    # Binomial draws: one baseline and one candidate arm per simulated figure and look, and the
    # same at up to 4000 studies for each N the power search tries.
    draws = tasks * (studies * (candidates + 5) + 2 * min(studies, 4000) * (_n_limit(rule.test) + 1))
    if simulated and draws > MAX_SIMULATED:
        return (f"rule {rule.rule} is simulated, and {studies:,} studies of {tasks} tasks with {candidates} candidates take "
                f"{draws:.2g} binomial draws, more than the {MAX_SIMULATED:.0e} plan makes (about 15 s); "
                "lower --studies, --tasks or --candidates")
    return None


def plan(design: Design, candidates: int = 1, studies: int = 20000) -> dict:
    """Every figure of a design (see ``abliterate plan``); ValueError when :func:`plan_problem`
    finds its cost out of proportion."""
    problem = plan_problem(design, candidates, studies)
    if problem:
        raise ValueError(problem)
    rule, n = design.rule, design.attempts
    better, base = design.rates()
    limit = _n_limit(rule.test)
    return {
        "design": {**asdict(design), "rule": asdict(rule), "candidates": candidates},
        "can_pass": can_pass(rule, n, design.tasks),
        "smallest_passing_n": smallest_passing_n(rule, design.tasks),
        "false_acceptance_per_candidate": acceptance(rule, n, base, base, 1, studies),
        "false_acceptance_all_candidates": acceptance(rule, n, base, base, candidates, studies),
        "power": acceptance(rule, n, better, base, 1, studies),
        "smallest_n_for_power": smallest_n_for_power(design, 1, POWER_TARGET, limit, min(studies, 4000)),
        "power_target": POWER_TARGET,
        "n_limit": limit,
    }


def _figure(f: dict) -> str:
    return f"{f['value']:.3f}" + ("" if f["method"] == "exact" else f" (simulated, se {f['se']:.3f})")


def summary(figures: dict) -> str:
    """One line with the design's figures, as the promoter prints it when it starts."""
    d = figures["design"]
    r = d["rule"]
    head = (f"design: rule {r['rule']}, {r['test']}, alpha {r['alpha']:g}, {d['tasks']} task(s), N = {d['attempts']} "
            f"(min {r['min_attempts']}), {d['candidates']} candidate(s): ")
    if not figures["can_pass"]:
        smallest = figures["smallest_passing_n"]
        return head + "can never accept a candidate" + (f"; the smallest N that can is {smallest}" if smallest else "")
    power_n = figures["smallest_n_for_power"]
    return head + (f"false acceptance {_figure(figures['false_acceptance_per_candidate'])} per candidate, "
                   f"{_figure(figures['false_acceptance_all_candidates'])} over all candidates at base rate {d['base_rate']:g}; "
                   f"power {_figure(figures['power'])} for +{d['lift']:g} on {d['on']} task(s); "
                   + (f"N = {power_n} gives {POWER_TARGET:.0%} power" if power_n else
                      f"no N up to {figures['n_limit']} gives {POWER_TARGET:.0%} power"))
