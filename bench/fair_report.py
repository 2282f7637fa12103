"""The fair front benchmark's report: per (model, seed, judge), every tool against ours.

``python bench/fair_front.py report`` runs :func:`report`: it reads the kept records
(``bench/fair/MODEL/base.json`` and ``TOOL-bBUDGET-sSEED/{trials,evaluation}.json``), compares
the tools by bench/fair_protocol.py's rules, prints the table with bootstrap intervals, and writes
it to ``bench/fair/report-bBUDGET.{md,json}`` (with ``--model M``, ``report-bBUDGET-M.{md,json}``). The summary counts the issue's two goals over
(model, seed, peer) pairs per judge and model role; a variant of ours is counted apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import fair_protocol as protocol


def scored_run(name: str, evaluation: dict) -> list[protocol.Scored]:
    return [protocol.Scored(f"{name}:{n}", c["refused"]["harmful"], c["kl"]) for n, c in evaluation["candidates"].items()]


def model_runs(folder: Path, budget: int) -> dict[int, dict[str, tuple[dict, dict]]]:
    """seed -> tool -> (trials record, evaluation record) of the evaluated runs at ``budget``."""
    runs: dict[int, dict[str, tuple[dict, dict]]] = {}
    for kept in sorted(folder.glob(f"*-b{budget}-s*")):
        if (kept / "evaluation.json").exists():
            trials = json.loads((kept / "trials.json").read_text())
            runs.setdefault(trials["seed"], {})[trials["tool"]] = (trials, json.loads((kept / "evaluation.json").read_text()))
    return runs


def compare_seed(base_record: dict, tools: dict[str, tuple[dict, dict]], judge: str, draws: int) -> dict:
    """One (model, seed, judge) row: the protocol's comparison, over-refusal and cost per tool."""
    import statistics

    base = protocol.Scored("base", base_record["refused"]["harmful"], base_record["kl"])
    result = protocol.compare({tool: scored_run(tool, e) for tool, (_, e) in tools.items()}, base, judge, draws=draws)
    for tool, (trials, evaluation) in tools.items():
        over = [sum(c["refused"]["edgy"][judge]) for c in evaluation["candidates"].values()]
        result["tools"][tool].update({
            "over_refusals": [min(over), max(over)], "cpu_seconds": trials["cpu_seconds"],
            # temaq's record holds its one chosen row; its attempts are the trials it spent
            "cpu_per_trial": trials["cpu_seconds"] / (trials.get("attempts") or len(trials["trials"])),
            "median_trial_seconds": statistics.median(t["seconds"] for t in trials["trials"]), "threads": trials["threads"],
            "cpu": trials.get("cpu")})
    result["base_over_refusals"] = sum(base_record["refused"]["edgy"][judge])
    result["edgy_total"] = len(base_record["refused"]["edgy"][judge])
    return result


def report(args) -> None:
    rows = []
    for folder in sorted(p for p in args.record.iterdir() if (p / "base.json").exists()):
        if args.model and folder.name != args.model:
            continue
        base_record = json.loads((folder / "base.json").read_text())
        for seed, tools in sorted(model_runs(folder, args.budget).items()):
            if "ours" in tools and len(tools) > 1:
                for judge in base_record["refused"]["harmful"]:
                    rows.append({"model": folder.name, "role": base_record["role"], "protocol": base_record.get("protocol", 1),
                                 "seed": seed, "budget": args.budget,
                                 **compare_seed(base_record, tools, judge, args.draws)})
    header = ("| model (role) | seed | judge | base refusals | tool | HV (95 % CI) | lowest refusals, KL | "
              "HV ours minus tool (95 % CI) | KL ratio ours/tool at its lowest count (95 % CI) | over-refusal | "
              "CPU s (per trial) | median s/trial |")
    versions = ", ".join(str(v) for v in sorted({r["protocol"] for r in rows})) or str(protocol.PROTOCOL)
    text = "\n".join([f"Protocol {versions}; budget {args.budget} trials; KL bound {protocol.KL_BOUND}; "
                      f"{args.draws} paired bootstrap draws.", "",
                      header, "|" + "---|" * 12, *map(_row_markdown, rows), "", *summary(rows)])
    print(text)
    # A report of one model goes beside the whole one, never over it.
    stem = f"report-b{args.budget}" + (f"-{args.model}" if args.model else "")
    (args.record / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    (args.record / f"{stem}.md").write_text(text + "\n")


def summary(rows: list[dict]) -> list[str]:
    """Per judge and model role, the two goals counted over (model, seed, peer) pairs, and the
    pairs whose interval does not exclude the other outcome. A variant of ours (``ours-tpe``) is
    counted apart from the peers: it answers whether our defaults help, not whether we lead. Each
    variant then gets a line of its own, its hypervolume difference from the default seed by seed."""
    lines = []
    for judge in sorted({r["judge"] for r in rows}):
        for role in ("evaluation", "development", "local"):
            for kind, of_ours in (("peer", False), ("variant", True)):
                pairs = [f for r in rows if r["judge"] == judge and r["role"] == role
                         for peer, f in r["peers"].items() if peer.startswith("ours") == of_ours]
                if pairs:
                    lines.append(f"{judge}, {role} models: " + _goals(pairs, kind))
    variants = sorted({peer for r in rows for peer in r["peers"] if peer.startswith("ours")})
    lines += [""] if variants else []
    for judge in sorted({r["judge"] for r in rows}):
        for variant in variants:
            for model in sorted({r["model"] for r in rows}):
                seeds = [(r["seed"], r["peers"][variant]["hypervolume_difference"]) for r in rows
                         if r["judge"] == judge and r["model"] == model and variant in r["peers"]]
                if seeds:
                    lines.append(f"- {judge}, {model}, {variant}: ours minus {variant} in hypervolume, by seed: "
                                 + "; ".join(f"s{seed} {_ci(d)}" for seed, d in seeds)
                                 + f" ({sum(d['high'] < 0 for _, d in seeds)} with the whole interval below 0, "
                                 f"{sum(d['low'] > 0 for _, d in seeds)} above).")
    runs: dict[str, set[str]] = {}  # the CPU a run's record names -> its runs: pairs on one CPU compare cleanly
    for r in rows:
        for tool, figures in r["tools"].items():
            runs.setdefault(figures.get("cpu") or "not recorded (before records named it)", set()).add(f"{r['model']} {tool} s{r['seed']}")
    lines += ["", "The CPU each run was made on:"] + [f"- {cpu}: {', '.join(sorted(names))}" for cpu, names in sorted(runs.items())]
    return lines


def _goals(pairs: list[dict], kind: str) -> str:
    hv_ok = sum(f["hypervolume_difference"]["estimate"] >= 0 for f in pairs)
    hv_sure = sum(f["hypervolume_difference"]["low"] > 0 for f in pairs)
    kl_ok = sum(f["kl_ratio"]["estimate"] <= 0.6 for f in pairs)
    kl_sure = sum(f["kl_ratio"]["high"] <= 0.6 for f in pairs)
    return (f"our hypervolume at or above the {kind}'s on {hv_ok} of {len(pairs)} (model, seed, {kind}) pairs "
            f"({hv_sure} with the whole interval above 0); KL at most 0.6x the {kind}'s at its lowest count on "
            f"{kl_ok} of {len(pairs)} ({kl_sure} with the whole interval).")


def _ci(interval: dict, digits: int = 3, suffix: str = "") -> str:
    """``estimate (low-high)``; an infinite ratio is a count our candidates never reach."""
    show = lambda x: "not reached" if x == float("inf") else f"{x:.{digits}f}{suffix}"  # noqa: E731
    if interval["estimate"] == float("inf"):
        return "not reached"
    if interval["estimate"] != interval["estimate"]:  # nan: the peer's KL there is 0
        return "undefined"
    return f"{show(interval['estimate'])} ({show(interval['low'])}-{show(interval['high'])})"


def _row_markdown(row: dict) -> str:
    cells = []
    for tool, figures in row["tools"].items():
        peer = row["peers"].get(tool)
        low, high = figures["over_refusals"]
        cells.append(
            f"| {row['model']} ({row['role']}) | {row['seed']} | {row['judge']} | {row['base_refusals']}/{row['total']} | {tool} | "
            f"{_ci(figures['hypervolume'])} | {figures['lowest_refusals']}/{row['total']}, {figures['kl_at_lowest']:.4f} | "
            f"{_ci(peer['hypervolume_difference']) if peer else ''} | {_ci(peer['kl_ratio'], 2, 'x') if peer else ''} | "
            f"{low}-{high}/{row['edgy_total']} (base {row['base_over_refusals']}) | "
            f"{figures['cpu_seconds']:.0f} ({figures['cpu_per_trial']:.1f}) | {figures['median_trial_seconds']:.1f} |")
    return "\n".join(cells)
