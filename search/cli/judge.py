"""Commands on judges: ``judge-check`` (how well markers and a judge agree with labelled answers)."""

from __future__ import annotations

from abliterate.search.cli.common import add_command, console, judge_options, positive


def register(commands) -> None:
    check = add_command(commands, "judge-check", "agreement of the markers and of a judge with labelled answers",
                        "Accuracy (four classes and compliance-or-not), per-class precision and recall, and the "
                        "confusion matrix of the refusal markers and of --judge against labelled answers.")
    check.add_argument("--labeled", required=True,
                       help="JSON lines {prompt, response, label} (label: refusal, compliance, evasive, degenerate) or a preset: "
                            "uncensorbench, judge-hard, refuser-answers, real-answers; a slice like uncensorbench[0:40] takes part of it")
    judge_options(check, default_model="none; an llm judge needs it here")
    check.add_argument("--dtype", default="auto", help="dtype of --judge-model: auto, bf16, fp16, fp32")
    check.add_argument("--batch-size", type=positive, default=8, help="answers judged per forward pass")
    check.add_argument("--json", action="store_true", help='print {"markers": {...}, "judge": {...}}')
    check.set_defaults(run=_judge_check)


def _judge_check(args) -> int:
    import json
    import time

    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.judges import MarkerJudge
    from abliterate.objectives.labeled import agreement, load_labeled, prefilter_cost
    from abliterate.search.cli.common import judge_settings

    rows = load_labeled(args.labeled)
    if args.judge == "llm" and not args.judge_model:
        raise AblationError("judge-check --judge llm needs --judge-model PATH (there is no base model here to judge with)")
    prompts, responses, labels = [r.prompt for r in rows], [r.response for r in rows], [r.label for r in rows]
    result = {"labeled": args.labeled, "rows": len(rows),
              "markers": agreement(labels, [v.label for v in MarkerJudge().verdicts(prompts, responses)]),
              "prefilter": prefilter_cost(rows), "judge": None}
    if args.judge != "markers":
        judge = judge_settings(args).build()
        start = time.perf_counter()
        verdicts = judge.verdicts(prompts, responses)
        seconds = time.perf_counter() - start
        # a trained judge shown the rows it learnt from is not measured on them
        seen = judge.trained_on(prompts, responses) if hasattr(judge, "trained_on") else 0
        result["judge"] = {"spec": args.judge, "model": args.judge_model, "prefilter": args.judge_prefilter,
                           **agreement(labels, [v.label for v in verdicts]), "seconds": round(seconds, 2), "trained_on": seen,
                           "seconds_per_answer": round(seconds / len(rows), 4),
                           "mean_non_compliance": sum(v.non_compliance for v in verdicts) / len(rows),
                           # does the continuous score (what a search optimises) rank the classes apart?
                           "mean_non_compliance_by_label": mean_by_label(labels, [v.non_compliance for v in verdicts])}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    out = console()
    out.print(f"{len(rows)} labelled answers from {args.labeled}")
    for name in ("markers", "judge"):
        if result[name] is not None:
            print_agreement(out, name if name == "markers" else f"judge {args.judge}", result[name])
    if result["judge"] and result["judge"]["trained_on"]:
        out.print(f"[bold]note[/]: judge {args.judge} was trained on {result['judge']['trained_on']} of these {len(rows)} answers; "
                  "its figures here are not a held-out measure", highlight=False)
    cost = result["prefilter"]
    wrong = ", ".join(f"{n} {label}" for label, n in cost["wrong_by_label"].items())
    out.print(f"--judge-prefilter would settle {cost['settled']} of {cost['rows']} answers as refusals without the judge; "
              f"{cost['wrong']} of them are labelled otherwise{f' ({wrong})' if wrong else ''}", highlight=False)
    return 0


def mean_by_label(labels: list[str], values: list[float]) -> dict[str, float]:
    """The mean of ``values`` over the rows of each label present."""
    sums: dict[str, list[float]] = {}
    for label, value in zip(labels, values):
        sums.setdefault(label, []).append(value)
    return {label: sum(v) / len(v) for label, v in sums.items()}


def print_agreement(out, title: str, figures: dict) -> None:
    from rich.table import Table

    from abliterate.objectives.judges import VERDICTS

    def share(value):
        return "-" if value is None else f"{value:.2f}"

    extra = f", {figures['seconds_per_answer']:.3f} s an answer" if "seconds_per_answer" in figures else ""
    out.print(f"[bold]{title}[/]: accuracy {figures['accuracy']:.3f}, binary (compliance or not) "
              f"{figures['binary_accuracy']:.3f}{extra}", highlight=False)
    table = Table(title=f"{title}: rows are labels, columns verdicts")
    for column in ("label", *VERDICTS, "precision", "recall"):
        table.add_column(column)
    for label in VERDICTS:
        c = figures["per_class"][label]
        table.add_row(label, *(str(figures["confusion"][label][v]) for v in VERDICTS), share(c["precision"]), share(c["recall"]))
    out.print(table)
    if "mean_non_compliance_by_label" in figures:
        out.print("mean non-compliance (the search's score) by label: " + ", ".join(
            f"{label} {value:.3f}" for label, value in figures["mean_non_compliance_by_label"].items()), highlight=False)
