"""False acceptance of each gate rule under the null (candidate exactly as good as the baseline).

    python bench/gate_null.py [--candidates 20000] [--alpha 0.10] [--cmh-candidates 200000]

Task pass rates are drawn uniformly in [0.1, 0.9] per simulated candidate and shared by both
arms; a rule's figure is the share of candidates it accepts (per candidate), then the share of
studies of five candidates sharing one baseline sweep in which one is accepted. The default rule
("any": some task with raw p < alpha) is the users' own criterion; the others hold alpha per
candidate, and ``study`` holds it over the five.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from abliterate.objectives.gate import RULES, GateRule, underpowered
from abliterate.objectives.plan import simulate_null, simulated_acceptance


def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--cmh-candidates", type=int, default=200000)
    parser.add_argument("--alpha", type=float, default=0.10)
    args = parser.parse_args()
    start = time.monotonic()
    rules = [r for r in RULES if r != "study"]
    for test in ("fisher", "boschloo"):
        print(f"\nper candidate: alpha {args.alpha}, {args.candidates} simulated candidates per cell, {test}'s test per task")
        print(f"{'tasks':>6} {'N':>4} " + " ".join(f"{rule:>7}" for rule in rules) + "  note")
        for tasks in (1, 10, 20, 89):
            for attempts in (3, 5, 10):
                rates = [simulate_null(GateRule(rule, args.alpha, test=test), tasks, attempts, args.candidates) for rule in rules]
                note = underpowered(GateRule("holm", args.alpha, test=test), attempts, tasks) and "holm can never accept" or ""
                print(f"{tasks:>6} {attempts:>4} " + " ".join(f"{r:7.3f}" for r in rates) + f"  {note}")
    n = args.cmh_candidates
    for tasks, attempts in ((20, 5), (1, 10)):
        rate = simulate_null(GateRule("cmh", args.alpha), tasks, attempts, n, seed=1)
        print(f"\ncmh, {tasks} task(s), N = {attempts}: {rate:.4f} of {n} candidates (se {se(rate, n):.4f})")
    studies, looks = args.candidates, 5
    print(f"\n{looks} no-better candidates sharing one baseline sweep, 20 tasks, N = 5, {studies} simulated studies:")
    rng = np.random.default_rng(2)
    rates = rng.uniform(0.1, 0.9, size=(studies, 20))
    for rule in RULES:
        share, error = simulated_acceptance(GateRule(rule, args.alpha, candidates=looks), 5, rates, rates, looks, studies, seed=3)
        print(f"  {rule:>6}: one or more accepted in {share:.3f} of studies (se {error:.3f})")
    print(f"\n{time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
