"""The planning figures against the gate itself and against exact enumeration of small designs."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binom

from abliterate.objectives.gate import GateRule, TaskCounts, gate
from abliterate.objectives.plan import (
    MAX_ATTEMPTS,
    Design,
    acceptance,
    decide,
    exact_acceptance,
    plan,
    plan_problem,
    simulated_acceptance,
    smallest_n_for_power,
    summary,
)


def as_counts(cand_row, base_row, attempts):
    return [TaskCounts(f"t{i}", int(a), attempts, int(b), attempts) for i, (a, b) in enumerate(zip(cand_row, base_row))]


@pytest.mark.parametrize("rule, tasks, attempts", [
    (GateRule("any"), 6, 4), (GateRule("holm"), 3, 5), (GateRule("bh"), 5, 4), (GateRule("cmh"), 4, 3),
    (GateRule("cmh", min_attempts=1), 3, 1), (GateRule("study", candidates=2), 2, 6), (GateRule("any"), 4, 2),
])
def test_vectorised_decisions_are_the_gates_own(rule, tasks, attempts):
    rng = np.random.default_rng(7)
    rates = rng.uniform(0.1, 0.9, size=(300, tasks))
    cand, base = rng.binomial(attempts, np.clip(rates + 0.3, 0, 1)), rng.binomial(attempts, rates)
    fast = decide(rule, attempts, cand, base)
    slow = [gate(as_counts(c, b, attempts), rule).accepted for c, b in zip(cand, base)]
    assert fast.tolist() == slow
    assert 0 < sum(slow) or rule.min_attempts > attempts or rule.rule == "study"


@pytest.mark.parametrize("name", ["any", "bh"])
def test_vectorised_decisions_with_boschloo(name):
    rule, attempts = GateRule(name, test="boschloo"), 4
    rng = np.random.default_rng(8)
    cand, base = rng.binomial(attempts, 0.7, size=(40, 3)), rng.binomial(attempts, 0.3, size=(40, 3))
    slow = [gate(as_counts(c, b, attempts), rule).accepted for c, b in zip(cand, base)]
    assert decide(rule, attempts, cand, base).tolist() == slow and 0 < sum(slow) < len(slow)


def enumerate_acceptance(rule, attempts, cand_rates, base_rates):
    """P(accepted) by summing over every outcome of every task, the gate deciding each."""
    outcomes = list(itertools.product(range(attempts + 1), repeat=2 * len(base_rates)))
    total = 0.0
    for outcome in outcomes:
        cand, base = outcome[: len(base_rates)], outcome[len(base_rates):]
        weight = np.prod(binom.pmf(cand, attempts, cand_rates)) * np.prod(binom.pmf(base, attempts, base_rates))
        total += weight * gate(as_counts(cand, base, attempts), rule).accepted
    return total


@pytest.mark.parametrize("name", ["any", "holm", "bh", "cmh"])
def test_acceptance_agrees_with_exact_enumeration_of_a_small_design(name):
    rule, attempts = GateRule(name, min_attempts=1), 3
    cand_rates, base_rates = np.array([0.8, 0.4]), np.array([0.4, 0.4])
    expected = enumerate_acceptance(rule, attempts, cand_rates, base_rates)
    got = acceptance(rule, attempts, cand_rates, base_rates, studies=40000)
    if got["method"] == "exact":
        assert got["value"] == pytest.approx(expected, abs=1e-12)
    else:
        assert abs(got["value"] - expected) < 4 * got["se"]


def test_acceptance_over_candidates_sharing_one_baseline_agrees_with_enumeration():
    rule, attempts, rate = GateRule("any", min_attempts=1), 3, 0.5
    accepts = {(a, b): gate([TaskCounts("t", a, attempts, b, attempts)], rule).accepted
               for a in range(attempts + 1) for b in range(attempts + 1)}
    pmf = binom.pmf(range(attempts + 1), attempts, rate)
    expected = sum(pmf[b] * pmf[a1] * pmf[a2] * (accepts[a1, b] or accepts[a2, b])
                   for b in range(attempts + 1) for a1 in range(attempts + 1) for a2 in range(attempts + 1))
    assert exact_acceptance(rule, attempts, np.array([rate]), np.array([rate]), candidates=2) == pytest.approx(expected)
    independent = 1 - (1 - exact_acceptance(rule, attempts, np.array([rate]), np.array([rate]))) ** 2
    assert expected != pytest.approx(independent)  # the shared baseline matters
    simulated, se = simulated_acceptance(rule, attempts, np.array([rate]), np.array([rate]), 2, studies=40000)
    assert abs(simulated - expected) < 4 * se


def test_smallest_n_for_power_is_the_first_n_that_reaches_the_target():
    design = Design(GateRule("any"), tasks=1, attempts=5, base_rate=0.3, lift=0.5)
    n = smallest_n_for_power(design)

    def power(k):
        return acceptance(design.rule, k, *Design(design.rule, 1, k, 0.3, 0.5).rates())["value"]

    assert power(n) >= 0.8 > max(power(k) for k in range(3, n))


def test_plan_of_a_design_that_can_never_pass_says_so_and_names_the_smallest_n():
    figures = plan(Design(GateRule("holm"), tasks=89, attempts=5), candidates=5)
    assert not figures["can_pass"] and figures["smallest_passing_n"] == 6
    assert figures["false_acceptance_per_candidate"]["value"] == 0.0 and figures["power"]["value"] == 0.0
    assert "can never accept a candidate; the smallest N that can is 6" in summary(figures)


def test_plan_of_the_users_criterion_reports_exact_figures():
    figures = plan(Design(GateRule("any"), tasks=5, attempts=3), candidates=5)
    assert figures["can_pass"] and figures["false_acceptance_per_candidate"]["method"] == "exact"
    per, over = figures["false_acceptance_per_candidate"]["value"], figures["false_acceptance_all_candidates"]["value"]
    assert 0 < per < over < 1 - (1 - per) ** 5 + 1e-12
    assert "simulated" in summary(plan(Design(GateRule("cmh"), tasks=5, attempts=3), studies=2000))


def abliterate(*args):
    return subprocess.run([sys.executable, "-m", "abliterate", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_plan_command_prints_the_users_criterion_and_json_with_every_figure():
    line = abliterate("plan", "--tasks", 5, "--attempts", 3)
    assert line.returncode == 0, line.stderr
    assert "rule any" in line.stdout and "per candidate" in line.stdout and "80% power" in line.stdout
    result = abliterate("plan", "--tasks", 89, "--attempts", 5, "--rule", "holm", "--json")
    figures = json.loads(result.stdout)
    assert figures["can_pass"] is False and figures["smallest_passing_n"] == 6
    assert {"false_acceptance_per_candidate", "false_acceptance_all_candidates", "power", "smallest_n_for_power"} <= figures.keys()


@pytest.mark.parametrize("args, message", [
    (["--base-rate", "2"], "--base-rate: must be between 0 and 1, got 2"),
    (["--lift", "nan"], "--lift: must be between 0 and 1, got nan"),
    (["--alpha", "0"], "--alpha: must be above 0 and below 1, got 0"),
    (["--on", "some"], "invalid choice"),
    # Not clipped to a smaller lift than the one asked for.
    (["--lift", "0.9", "--base-rate", "0.9"], "--base-rate 0.9 plus --lift 0.9 is a pass rate above 1; lower --lift to 0.1 or less"),
    # Refused before any work, not a MemoryError or minutes without output.
    (["--rule", "cmh", "--studies", "1000000000"], "--studies is at most 1,000,000"),
    (["--attempts", "1000000"], "plan computes designs up to N = 400 attempts per arm with fisher's test"),
    (["--test", "boschloo", "--attempts", "200", "--tasks", "20"], "up to N = 30 attempts per arm with boschloo's test"),
    (["--rule", "bh", "--tasks", "1000"], "rule bh is simulated, and 20,000 studies of 1000 tasks with 5 candidates take 6.9e+08"),
    (["--tasks", "100000"], "plan computes designs up to 1000 tasks"),
])
def test_plan_bad_input_is_one_line(args, message):
    result = abliterate("plan", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_design_states_only_what_it_can_compute():
    with pytest.raises(ValueError, match="a lift of 0.9 on a base rate of 0.9 is a pass rate above 1"):
        Design(GateRule(), 5, 3, base_rate=0.9, lift=0.9)
    for bad in ({"tasks": 0}, {"attempts": 2.5}, {"base_rate": float("nan")}, {"lift": -0.1}, {"on": "some"}):
        with pytest.raises(ValueError):
            Design(**{"rule": GateRule(), "tasks": 5, "attempts": 3, **bad})
    assert Design(GateRule(), 5, 3, base_rate=0.7, lift=0.3).rates()[0][0] == 1.0  # exactly 1 is allowed
    fisher, boschloo = Design(GateRule(), 5, MAX_ATTEMPTS["fisher"]), Design(GateRule(test="boschloo"), 5, MAX_ATTEMPTS["boschloo"])
    assert plan_problem(fisher) is None and plan_problem(boschloo) is None
    assert "N = 30" in plan_problem(Design(GateRule(test="boschloo"), 5, 31))
    assert plan_problem(Design(GateRule("cmh"), 89, 5), 5, 20000) is None  # terminal-bench 2 at the defaults
    with pytest.raises(ValueError, match="studies"):
        plan(Design(GateRule("cmh"), 5, 3), 5, studies=10**9)
