"""False positive rate per candidate of each gate rule under the null (candidate = baseline).

    python bench/gate_null.py [--candidates 2000] [--alpha 0.10]

Task pass rates are drawn uniformly in [0.1, 0.9] per simulated candidate and shared by both
arms; a rule's figure is the share of candidates it accepts. The default rule ("any": some task
with raw p < alpha) is the users' own criterion; the others hold alpha.
"""

from __future__ import annotations

import argparse

from objectives.gate import RULES, GateRule, underpowered
from objectives.plan import simulate_null


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.10)
    args = parser.parse_args()
    print(f"alpha {args.alpha}, {args.candidates} simulated candidates per cell, Fisher's test per task")
    print(f"{'tasks':>6} {'N':>4} " + " ".join(f"{rule:>7}" for rule in RULES) + "  note")
    for tasks in (1, 10, 89):
        for attempts in (3, 5, 10):
            rates = [simulate_null(GateRule(rule, args.alpha), tasks, attempts, args.candidates) for rule in RULES]
            note = underpowered(attempts, args.alpha) or ""
            print(f"{tasks:>6} {attempts:>4} " + " ".join(f"{r:7.3f}" for r in rates) + f"  {note}")


if __name__ == "__main__":
    main()
