"""The gate's statistics against scipy / statsmodels and hand formulas, and its error rates under the null."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import boschloo_exact, fisher_exact, hypergeom, norm
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.multitest import multipletests

from abliterate.objectives.gate import (
    TOLERANCE,
    GateRule,
    TaskCounts,
    adjust,
    below,
    best_p,
    can_pass,
    exact_p,
    gate,
    lift_p,
    no_evidence,
    pooled_lift,
    smallest_p,
    smallest_passing_n,
    underpowered,
)
from abliterate.objectives.plan import simulate_null


def all_tables(n_cand, n_base):
    return [TaskCounts("t", cp, n_cand, bp, n_base) for cp in range(n_cand + 1) for bp in range(n_base + 1)]


@pytest.mark.parametrize("n_cand, n_base", [(2, 2), (3, 3), (5, 5), (4, 7)])
def test_fisher_matches_scipy_and_the_hypergeometric_tail(n_cand, n_base):
    for c in all_tables(n_cand, n_base):
        expected = fisher_exact([[c.candidate_pass, c.baseline_pass], [n_cand - c.candidate_pass, n_base - c.baseline_pass]],
                                alternative="greater").pvalue
        passes = c.candidate_pass + c.baseline_pass
        # P(X >= candidate_pass) for X ~ passes drawn from n_cand + n_base, n_cand of them candidates
        tail = hypergeom(n_cand + n_base, n_cand, passes).sf(c.candidate_pass - 1)
        assert lift_p(c) == pytest.approx(expected, abs=1e-12)
        assert lift_p(c) == pytest.approx(tail, abs=1e-12)


def test_boschloo_matches_scipy_and_is_never_less_powerful_than_fisher():
    for c in all_tables(4, 4):
        expected = boschloo_exact(c.table(), alternative="greater").pvalue
        got = lift_p(c, "boschloo")
        assert got == pytest.approx(1.0 if math.isnan(expected) else expected, abs=1e-9)
        assert got <= lift_p(c) + 1e-9


@pytest.mark.parametrize("test", ["fisher", "boschloo"])
def test_edge_tables(test):
    assert lift_p(TaskCounts("t", 0, 5, 0, 5), test) == 1.0  # 0/N vs 0/N: no evidence
    assert lift_p(TaskCounts("t", 5, 5, 5, 5), test) == 1.0  # N/N vs N/N
    assert lift_p(TaskCounts("t", 0, 3, 3, 3), test) == 1.0  # a drop is never a lift
    assert lift_p(TaskCounts("t", 2, 2, 0, 0), test) == 1.0  # an empty arm carries nothing


def test_smallest_p_is_one_over_binomial_and_n2_can_never_reach_ten_percent():
    for n in range(1, 9):
        assert smallest_p(n, n) == pytest.approx(1 / math.comb(2 * n, n))
    assert smallest_p(2, 2) > 0.10
    one_task = GateRule(min_attempts=1)
    assert underpowered(one_task, 2, 1) is not None and "never reach" in underpowered(one_task, 2, 1)
    assert underpowered(one_task, 3, 1) is None  # 3/3 vs 0/3 gives 0.05
    assert underpowered(GateRule(alpha=0.05, min_attempts=1), 3, 1) is not None  # ... which is not below 0.05


def test_adjustments_match_hand_computed_holm_and_bh():
    raw = [0.01, 0.04, 0.03, 0.20]
    # Holm: sorted 0.01,0.03,0.04,0.20 times 4,3,2,1, running max -> 0.04, 0.09, 0.09, 0.20
    assert adjust(raw, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # BH: p * m / rank, running min from the top -> 0.04, 0.0533, 0.0533, 0.20
    assert adjust(raw, "bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])
    assert adjust([], "holm") == []


def test_adjustments_match_statsmodels_multipletests():
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 30):
        for _ in range(5):
            raw = rng.uniform(0, 1, size) ** 3
            raw[rng.integers(0, size)] = raw[0]  # ties
            for method, name in (("holm", "holm"), ("bh", "fdr_bh")):
                assert adjust(list(raw), method) == pytest.approx(multipletests(raw, method=name)[1], abs=1e-12)


def cmh_by_hand(counts):
    numerator = variance = 0.0
    for c in counts:
        n = c.candidate_n + c.baseline_n
        passes = c.candidate_pass + c.baseline_pass
        numerator += c.candidate_pass - c.candidate_n * passes / n
        variance += c.candidate_n * c.baseline_n * passes * (n - passes) / (n * n * (n - 1))
    return norm.sf(numerator / math.sqrt(variance))


def test_pooled_cmh_matches_the_hand_formula_and_statsmodels_odds_ratio():
    rng = np.random.default_rng(1)
    for _ in range(50):
        counts = [TaskCounts(f"t{i}", int(rng.integers(0, 6)), 5, int(rng.integers(0, 6)), 5) for i in range(8)]
        p, ratio = pooled_lift(counts)
        if all(c.candidate_pass + c.baseline_pass in (0, 10) for c in counts):
            assert (p, ratio) == (1.0, None)
            continue
        assert p == pytest.approx(cmh_by_hand(counts), rel=1e-9)
        expected = StratifiedTable(np.array([c.table() for c in counts], dtype=float).transpose(1, 2, 0)).oddsratio_pooled
        if math.isfinite(expected):
            assert ratio == pytest.approx(expected)


def test_pooled_cmh_sign_a_drop_is_not_a_lift():
    up = [TaskCounts(f"t{i}", 4, 5, 1, 5) for i in range(5)]
    down = [TaskCounts(f"t{i}", 1, 5, 4, 5) for i in range(5)]
    assert pooled_lift(up)[0] < 0.01
    assert pooled_lift(down)[0] > 0.99
    assert pooled_lift([TaskCounts("t", 0, 5, 0, 5), TaskCounts("u", 5, 5, 5, 5)]) == (1.0, None)


def test_default_rule_reproduces_the_users_criterion_and_flags_it_uncorrected():
    counts = [TaskCounts("lift", 3, 3, 0, 3), TaskCounts("flat", 1, 3, 1, 3)]
    result = gate(counts)
    assert result.accepted and "lift" in result.reason
    assert result.tasks[0].p == pytest.approx(0.05)
    assert any("uncorrected" in f for f in result.flags)
    # The same lift with 2 attempts per arm is not eligible.
    short = gate([TaskCounts("lift", 2, 2, 0, 2)])
    assert not short.accepted and any("not eligible" in f for f in short.flags)


def test_adjusted_rules_are_stricter_than_the_raw_one():
    counts = [TaskCounts("lift", 3, 3, 0, 3)] + [TaskCounts(f"flat{i}", 1, 3, 1, 3) for i in range(9)]
    assert gate(counts, GateRule("any")).accepted
    assert not gate(counts, GateRule("holm")).accepted
    assert not gate(counts, GateRule("bh")).accepted
    uniform = [TaskCounts(f"t{i}", 4, 6, 2, 6) for i in range(20)]
    assert gate(uniform, GateRule("cmh")).accepted and not gate(uniform, GateRule("holm")).accepted
    assert not gate(uniform, GateRule("cmh")).flags
    assert any("normal approximation" in f for f in gate(uniform[:2], GateRule("cmh")).flags)


def test_rule_rejects_bad_settings():
    for bad in ({"rule": "best"}, {"test": "z"}, {"alpha": 1.5}, {"alpha": math.nan}, {"alpha": math.inf}, {"alpha": 0},
                {"min_attempts": 0}, {"min_attempts": 2.5}, {"candidates": 0}, {"candidates": 1.5}):
        with pytest.raises(ValueError):
            GateRule(**bad)


def test_no_evidence_is_no_task_with_min_attempts_valid_attempts_in_each_arm():
    rule = GateRule(min_attempts=3)
    assert no_evidence([TaskCounts("a", 0, 0, 0, 0), TaskCounts("b", 2, 2, 0, 3)], rule) == (
        "no task has 3 valid attempts in each arm (2 valid candidate and 3 valid baseline attempts over 2 task(s); "
        "the others were invalid)")
    assert no_evidence([TaskCounts("a", 0, 0, 0, 0), TaskCounts("b", 0, 3, 0, 3)], rule) is None  # a 0/3 vs 0/3 task is data


def test_null_simulation_default_rule_inflates_and_adjusted_rules_hold_alpha(capsys):
    """Under the null (same pass rates in both arms) the adjusted rules keep the false positive
    rate per candidate at or below alpha; the default, uncorrected rule does not with many tasks."""
    alpha, tasks, attempts, candidates = 0.10, 20, 5, 4000
    rates = {rule: simulate_null(GateRule(rule, alpha), tasks, attempts, candidates) for rule in ("any", "holm", "bh", "cmh")}
    with capsys.disabled():
        print(f"\nfalse positive rate per candidate under the null ({tasks} tasks, {attempts} attempts per arm, "
              f"alpha {alpha}): " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    margin = 3 * math.sqrt(alpha * (1 - alpha) / candidates)
    assert rates["any"] > 2 * alpha
    for rule in ("holm", "bh", "cmh"):
        assert rates[rule] <= alpha + margin
    # With one task the raw rule is a single exact test, which holds alpha too.
    assert simulate_null(GateRule("any", alpha), 1, attempts, candidates) <= alpha + margin


def test_every_table_of_the_default_rule_at_n3_only_accepts_three_of_three_against_zero():
    accepted = [(c.candidate_pass, c.baseline_pass) for c in all_tables(3, 3) if gate([c]).accepted]
    assert accepted == [(3, 0)]


# ---- the defects, each with its own example -------------------------------------------

def test_a_p_exactly_at_alpha_is_not_accepted():
    """3/8 against 0/8 gives exactly 56/560 = 1/10, which scipy's float puts just below 0.1."""
    assert exact_p(TaskCounts("t", 3, 8, 0, 8)) == Fraction(1, 10)
    assert fisher_exact([[3, 0], [5, 8]], alternative="greater").pvalue < 0.1  # the rounding the gate must not trust
    assert not gate([TaskCounts("t", 3, 8, 0, 8)]).accepted
    assert not gate([TaskCounts("t", 1, 3, 0, 27)]).accepted  # 3/30
    assert not gate([TaskCounts("t", 2, 6, 0, 19)], GateRule(alpha=0.05)).accepted  # 15/300
    # Just above the boundary it is accepted: the decision is p < alpha, not p < alpha - something.
    assert gate([TaskCounts("t", 3, 8, 0, 8)], GateRule(alpha=0.1000001)).accepted


def test_holm_and_bh_values_exactly_at_alpha_are_not_accepted():
    at_half = TaskCounts("a", 2, 6, 0, 19)  # p = 1/20 exactly
    # Holm: two tasks at 1/20 each -> 2 x 1/20 = 1/10 (the float product is 0.0999...).
    holm = gate([at_half, TaskCounts("b", 2, 6, 0, 19)], GateRule("holm"))
    assert holm.tasks[0].p_holm == pytest.approx(0.1) and not holm.accepted
    # BH: one task at 1/20 and one with no lift -> 1/20 x 2 / 1 = 1/10.
    bh = gate([at_half, TaskCounts("b", 0, 6, 0, 19)], GateRule("bh"))
    assert bh.tasks[0].p_bh == pytest.approx(0.1) and not bh.accepted
    assert adjust([Fraction(1, 20), Fraction(1, 20)], "holm") == [Fraction(1, 10)] * 2
    assert adjust([Fraction(1, 20), Fraction(1)], "bh") == [Fraction(1, 10), Fraction(1)]


def test_float_p_values_must_clear_alpha_by_the_documented_tolerance():
    assert not below(0.1 * (1 - TOLERANCE / 10), 0.1)  # equal to alpha up to rounding
    assert below(0.1 * (1 - 10 * TOLERANCE), 0.1)
    assert not below(Fraction(1, 10), 0.1) and below(Fraction(99, 1000), 0.1)


@pytest.mark.parametrize("rule, attempts, tasks, smallest", [
    (GateRule(), 2, 10, 3),  # the default --min-attempts 3: no task is ever eligible
    (GateRule(min_attempts=10), 5, 10, 10),
    (GateRule("holm"), 3, 2, 4),  # best Holm value 2 x 0.05
    (GateRule("holm"), 5, 26, 6),  # 26 / C(10, 5) = 0.103
    (GateRule("holm"), 5, 89, 6),  # terminal-bench 2
])
def test_underpowered_counts_min_attempts_rule_tasks_and_names_the_smallest_n(rule, attempts, tasks, smallest):
    warning = underpowered(rule, attempts, tasks)
    assert warning is not None and f"use --attempts {smallest} or more" in warning
    assert smallest_passing_n(rule, tasks) == smallest
    assert underpowered(rule, smallest, tasks) is None


def test_underpowered_counts_the_test():
    # Boschloo's best p at N = 2 is 1/16: it can pass at 0.10 where Fisher's 1/6 cannot.
    assert underpowered(GateRule(min_attempts=2), 2, 1) is not None
    assert underpowered(GateRule(min_attempts=2, test="boschloo"), 2, 1) is None
    assert underpowered(GateRule("holm"), 5, 25) is None


def test_underpowered_says_so_when_there_are_no_tasks():
    # no task, no outcome that can pass: a reason, not a TypeError from the missing best value
    for rule in (GateRule(), GateRule("holm"), GateRule("cmh")):
        assert underpowered(rule, 5, 0) == "there are no tasks to sweep; give the runner at least one task"


def all_outcomes(tasks, attempts):
    tables = all_tables(attempts, attempts)
    return [[TaskCounts(f"t{i}", c.candidate_pass, attempts, c.baseline_pass, attempts) for i, c in enumerate(combo)]
            for combo in itertools.product(tables, repeat=tasks)]


@pytest.mark.parametrize("rule, tasks, attempts", [
    (GateRule("holm", min_attempts=1), 2, 3), (GateRule("holm", min_attempts=1), 2, 4),
    (GateRule("bh", min_attempts=1), 2, 2), (GateRule("bh", min_attempts=1), 2, 3),
    (GateRule("cmh", min_attempts=1), 2, 1), (GateRule("cmh", min_attempts=1), 3, 1),
    (GateRule("study", min_attempts=1, candidates=2), 2, 4), (GateRule("study", min_attempts=1, candidates=2), 2, 5),
])
def test_can_pass_agrees_with_every_outcome_of_small_designs(rule, tasks, attempts):
    """Brute force: the design can pass iff some outcome of all its tasks is accepted."""
    assert can_pass(rule, attempts, tasks) == any(gate(o, rule).accepted for o in all_outcomes(tasks, attempts))
    if rule.rule == "cmh":
        best = min(pooled_lift(o)[0] for o in all_outcomes(tasks, attempts))
        assert best_p(rule, attempts, tasks) == pytest.approx(best, rel=1e-12)


def test_cmh_pools_only_eligible_tasks():
    counts = [TaskCounts(f"t{i}", 1, 1, 0, 1) for i in range(4)]
    assert pooled_lift(counts)[0] == pytest.approx(0.0228, abs=1e-4)  # what the rule used to accept
    result = gate(counts, GateRule("cmh"))
    assert not result.accepted and result.pooled_p == 1.0
    assert any("not eligible" in f for f in result.flags)


def test_cmh_few_informative_count_leaves_out_strata_the_pooled_test_drops():
    real = [TaskCounts(f"t{i}", 3, 5, 1, 5) for i in range(3)]
    empty_arm = [TaskCounts(f"e{i}", 2, 5, 0, 0) for i in range(2)]  # one arm has no valid attempt
    result = gate(real + empty_arm, GateRule("cmh"))
    assert any("only 3 eligible task(s)" in f for f in result.flags)
    assert result.pooled_p == pytest.approx(pooled_lift(real)[0])


@pytest.mark.parametrize("rule", [GateRule(r) for r in ("any", "holm", "bh", "cmh")])
def test_null_simulation_respects_min_attempts(rule):
    assert simulate_null(rule, 10, 2, 500) == 0.0  # N = 2 < --min-attempts 3: nothing is eligible
    assert simulate_null(GateRule(rule.rule, min_attempts=10), 10, 5, 500) == 0.0
    assert simulate_null(GateRule("cmh", min_attempts=2), 10, 2, 500) > 0.0  # the same design, eligible


def test_study_rule_spends_alpha_across_candidates_and_later_candidates_are_flagged():
    counts = [TaskCounts("lift", 6, 6, 0, 6)]  # p = 1/924
    study = GateRule("study", candidates=5)
    assert study.level(1) == pytest.approx(0.02) and study.level(6) == 0.0
    assert gate(counts, study, look=5).accepted
    sixth = gate(counts, study, look=6)
    assert not sixth.accepted and any("alpha is spent" in f for f in sixth.flags)
    later = gate(counts, GateRule("any"), look=3, tested_before=2)
    assert later.accepted and later.look == 3 and later.tested == 3
    assert any("uncorrected across candidates" in f for f in later.flags)
    assert not any("across candidates" in f for f in gate(counts).flags)
