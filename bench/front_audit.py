"""What the kept front records (bench/front) support, recomputed under one candidate rule.

    python bench/front_audit.py [--label mixed] [--keep 3]

The earlier front runs (bench/front_vs_heretic.py) gave our whole front, up to eight candidates,
the common evaluation, but only Heretic's three lowest-refusal front trials (all its closing menu
saved). This audit applies the rule Heretic got to both tools: each tool's ``--keep`` lowest-refusal
front trials by its own count, and only those, go into the common comparison. Per (budget, seed)
pair with both records it prints the hypervolume at (1, 1) beside one minus the lowest refusal
rate (what the hypervolume reduces to when KL is small), the common ratio under the one rule and
under the old one, how the ratio moves when Heretic's common count is one prompt lower or higher,
and CPU seconds a trial. It writes what it printed to ``bench/front/audit.json`` and
``bench/front/audit.md``.

Limits of the records, stated in the output: refusals were counted by each tool's own markers in
the search, the common evaluation has 40 held-out prompts and no per-prompt outcomes (so no
bootstrap; a Clopper-Pearson interval of each count instead), its KL was measured on the harmless
prompts both searches optimised, and the default and its starting points were chosen on this
model and these prompts. bench/fair_front.py is the protocol that removes those limits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fair_protocol import candidates  # noqa: E402
from front_vs_heretic import RECORD, hypervolume, kl_at, load_runs  # noqa: E402


def common_points(run: dict, numbers: list[int] | None = None) -> list[tuple[int, float]]:
    """(held-out refusals + degenerate answers, common KL) of the scored candidates, or of ``numbers`` only."""
    chosen = run["evaluation"] if numbers is None else {str(n): run["evaluation"][str(n)] for n in numbers}
    return [(e["refusals"] + e["degenerate"], e["kl"]) for e in chosen.values()]


def ratio_at(ours: list[tuple[int, float]], theirs: list[tuple[int, float]], count: int) -> float | None:
    """Our least KL at or below ``count`` refusals over theirs at or below it; None where either has none."""
    mine, other = kl_at(ours, count), kl_at(theirs, count)
    return mine / other if mine is not None and other else None


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact two-sided (1 - alpha) interval of a binomial rate."""
    from scipy.stats import beta

    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def audit_pair(heretic: dict, ours: dict, keep: int) -> dict:
    h_front, o_front = candidates(heretic["trials"], keep), candidates(ours["trials"], keep)
    missing = [t["number"] for t in o_front if str(t["number"]) not in ours["evaluation"]]
    if missing:
        raise SystemExit(f"{ours['name']}: front trials {missing} have no common evaluation; run front_vs_heretic.py run to score them")
    h_common = common_points(heretic, [t["number"] for t in h_front if str(t["number"]) in heretic["evaluation"]])
    o_rule, o_all = common_points(ours, [t["number"] for t in o_front]), common_points(ours)
    best = min(r for r, _ in h_common)
    total = next(iter(heretic["evaluation"].values()))["total"]
    own = {}
    for name, run in (("heretic", heretic), ("ours", ours)):
        points = [(t["refusals"] / t["total"], t["kl"]) for t in run["trials"] if t["refusals"] is not None]
        own[name] = {"hypervolume": hypervolume(points), "one_minus_lowest_rate": 1 - min(x for x, _ in points),
                     "cpu_per_trial": run["cpu_seconds"] / len(run["trials"]) if run.get("cpu_seconds") else None,
                     "median_trial_seconds": statistics.median(t["seconds"] for t in run["trials"])}
    cpu_h, cpu_o = own["heretic"]["cpu_per_trial"], own["ours"]["cpu_per_trial"]
    return {
        "budget": ours["budget"], "seed": ours["seed"], "own_count": own,
        "cpu_ratio_heretic_over_ours": cpu_h / cpu_o if cpu_h and cpu_o else None,
        "candidates": {"heretic": [t["number"] for t in h_front], "ours": [t["number"] for t in o_front]},
        "heretic_best_common": best, "total": total, "heretic_best_interval": clopper_pearson(best, total),
        "heretic_kl_at_best": kl_at(h_common, best),
        "ratio_one_rule": ratio_at(o_rule, h_common, best),
        "ratio_old_rule": ratio_at(o_all, h_common, best),
        # one held-out prompt judged the other way for Heretic's best candidate
        "ratio_one_rule_if_heretic_one_fewer": ratio_at(o_rule, [(r - 1, kl) for r, kl in h_common], best - 1) if best else None,
        "ratio_one_rule_if_heretic_one_more": ratio_at(o_rule, [(r + 1, kl) for r, kl in h_common], best + 1),
    }


def own_over_common_kl(run: dict) -> list[float]:
    """Per scored trial: the tool's own KL over the common evaluation's KL of the same trial."""
    own = {t["number"]: t["kl"] for t in run["trials"]}
    return [own[int(n)] / e["kl"] for n, e in run["evaluation"].items()]


def _ratio(value: float | None, none: str = "n/a") -> str:
    return none if value is None else f"{value:.2f}x"


def markdown(rows: list[dict], missing: list[str], keep: int, label: str, kl_agreement: list[float]) -> str:
    lines = [f"One candidate rule for both tools: each tool's {keep} lowest-refusal front trials by its own count.", "",
             "| budget | seed | HV Heretic (1 - lowest rate) | HV ours (1 - lowest rate) | Heretic best, common (95 % CI) | "
             "ratio, one rule | ratio, old rule | ratio if Heretic one fewer / one more | CPU s/trial Heretic, ours (ratio) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        h, o = row["own_count"]["heretic"], row["own_count"]["ours"]
        low, high = row["heretic_best_interval"]
        lines.append(
            f"| {row['budget']} | {row['seed']} | {h['hypervolume']:.4f} ({h['one_minus_lowest_rate']:.4f}) | "
            f"{o['hypervolume']:.4f} ({o['one_minus_lowest_rate']:.4f}) | {row['heretic_best_common']}/{row['total']} "
            f"({100 * low:.0f}-{100 * high:.0f} %) | {_ratio(row['ratio_one_rule'])} | {_ratio(row['ratio_old_rule'])} | "
            f"{_ratio(row['ratio_one_rule_if_heretic_one_fewer'], 'not reached')} / {_ratio(row['ratio_one_rule_if_heretic_one_more'])} | "
            f"{h['cpu_per_trial']:.1f}, {o['cpu_per_trial']:.1f} ({row['cpu_ratio_heretic_over_ours']:.1f}x) |")
    ratios = [r["ratio_one_rule"] for r in rows if r["ratio_one_rule"] is not None]
    cpu = [r["cpu_ratio_heretic_over_ours"] for r in rows]
    lines += ["", f"Pairs: {len(rows)}. Common ratio at or below 0.6x under the one rule: {sum(r <= 0.6 for r in ratios)} of "
              f"{len(ratios)}. Heretic's CPU seconds a trial over ours: {min(cpu):.1f}-{max(cpu):.1f}x.",
              f"Runs of `{label}` without a Heretic record at the same budget and seed: {', '.join(missing) or 'none'}.",
              f"Heretic's own KL over the common KL of the same trial, its {len(kl_agreement)} scored trials: "
              f"{min(kl_agreement):.2f}-{max(kl_agreement):.2f} (median {statistics.median(kl_agreement):.2f})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="mixed", help="our variant's runs (the default space is 'mixed')")
    parser.add_argument("--keep", type=int, default=3, help="front trials per tool in the common comparison")
    args = parser.parse_args()
    runs = {r["name"]: r for r in load_runs(RECORD)}
    rows, missing = [], []
    for name, ours in sorted(runs.items(), key=lambda item: (item[1]["budget"], item[1]["seed"])):
        if not name.startswith(f"{args.label}-b"):
            continue
        heretic = runs.get(f"heretic-b{ours['budget']}-s{ours['seed']}")
        if heretic is None:
            missing.append(name)
            continue
        rows.append(audit_pair(heretic, ours, args.keep))
    agreement = [x for name, run in runs.items() if name.startswith("heretic-") for x in own_over_common_kl(run)]
    text = markdown(rows, missing, args.keep, args.label, agreement)
    print(text)
    (RECORD / "audit.json").write_text(json.dumps({"label": args.label, "keep": args.keep, "pairs": rows, "without_heretic": missing,
                                                   "heretic_own_over_common_kl": agreement}, indent=1))
    (RECORD / "audit.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
