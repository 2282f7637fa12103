"""What the commands print: the front table and the promotion report (rich tables).

Shared by the commands that show them (``front``, ``search``, ``report``, ``demo``), so no
command module imports another.
"""

from __future__ import annotations

from abliterate.storage.records import TrialRecord


def print_front(study, out) -> None:
    """The study's front and, below it, the base model's figures (or why there are none)."""
    from abliterate.search.baseline import baseline_of
    from abliterate.search.front import feasible_front

    base = baseline_of(study)
    out.print(front_table(study.study_name, feasible_front(study), base))
    if base is None:
        from abliterate.search.baseline import baseline_line

        out.print(baseline_line(None), highlight=False)


WIDTH = 80  # the front table's most columns: a terminal's default width
DESCRIPTIVE = ("method", "scope", "intervention")  # what the edit was; the other columns are figures


def front_table(study_name: str, trials, base: dict | None = None):
    """The front as a table of at most 80 columns: one row per trial, fewest refusals first, then
    ``base``, the unedited model's figures on the same prompts (search.baseline), when measured.

    The edit's method, scope and intervention are columns; where they would make the table wider
    than 80 columns, those that are the same in every row are stated once under it instead."""
    rows = sorted(trials, key=lambda t: tuple(t.values))
    over = _third_column(rows, base)
    described = {name: [_described(t, name) for t in rows] for name in DESCRIPTIVE}
    constant = {name: values[0] for name, values in described.items() if values and len(set(values)) == 1}
    # Too wide: "degenerate" is shortened first, then the columns that are the same in every row
    # go, the widest first; figures are never cut (at worst a long method name is).
    degenerate, hidden = "degen" if over else "degenerate", {}
    table = _table(study_name, rows, base, over, degenerate, described, hidden)
    for name in ("degenerate", *sorted(constant, key=lambda column: -max(len(column), len(constant[column])))):
        if _width(table) <= WIDTH:
            break
        if name == "degenerate":
            degenerate = "degen"
        else:
            hidden = hidden | {name: constant[name]}
        table = _table(study_name, rows, base, over, degenerate, described, hidden)
    return table


def _third_column(rows, base: dict | None) -> str | None:
    """The heading of the third objective's column: ``over`` (over-refusal), ``wrong`` (capability
    questions answered wrong), or None when the study has two objectives."""
    if (base or {}).get("capability") is not None or any(TrialRecord.of(t).capability_accuracy is not None for t in rows):
        return "wrong"
    if any(len(t.values) > 2 for t in rows) or (base or {}).get("over_refusal") is not None:
        return "over"
    return None


def _base_third(base: dict) -> str:
    value = base.get("over_refusal") if base.get("capability") is None else 1.0 - base["capability"]
    return "" if value is None else f"{value:.0%}"


def _described(trial, name: str) -> str:
    # Spaces with one intervention do not sample it; ablation is the one studies had before there were others.
    return str(trial.params.get(name, "ablate" if name == "intervention" else ""))


def _table(study_name, rows, base, over, degenerate, described, hidden):
    from rich import box
    from rich.table import Table

    notes = []
    if hidden:
        notes.append("every trial: " + ", ".join(f"{name} {value}" for name, value in hidden.items()))
    if base is not None:
        notes.append(f"base: the unedited model on the same {base['prompts']} evaluation prompts")
    title = f"feasible Pareto front of {study_name!r}"
    table = Table(title=title, caption="; ".join(notes) or None, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True, title_justify="left", caption_justify="left", min_width=min(len(title), WIDTH))
    shown = [name for name in DESCRIPTIVE if name not in hidden]
    figures = [[str(t.number), f"{t.values[0]:.3f}", f"{t.values[1]:.3g}",
                *((f"{t.values[2]:.0%}" if len(t.values) > 2 else "",) if over else ()),
                f"{r.refusal_rate or 0:.0%}", f"{r.degenerate_rate or 0:.0%}"] for t, r in ((t, TrialRecord.of(t)) for t in rows)]
    if base is not None:
        figures.append(["base", f"{base['refusal']:.3f}", "0",
                        *((_base_third(base),) if over else ()),
                        f"{base['refusal_rate']:.0%}", f"{base['degenerate_rate']:.0%}"])
    for i, column in enumerate(("trial", "refusal", "KL", *((over,) if over else ()), "refused", degenerate)):
        table.add_column(column, no_wrap=True, justify="right", min_width=max([len(column), *(len(row[i]) for row in figures)]))
    for name in shown:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for i, cells in enumerate(figures[:len(rows)]):
        table.add_row(*cells, *(described[name][i] for name in shown))
    if base is not None:
        table.add_section()
        table.add_row(*figures[-1], *("" for _ in shown))
    return table


def _width(table) -> int:
    """The columns ``table`` takes when nothing limits it."""
    import io

    from rich.console import Console

    wide = Console(width=1000, file=io.StringIO(), color_system=None)
    wide.print(table)
    return max((len(line.rstrip()) for line in wide.file.getvalue().splitlines()), default=0)


def print_report(rows: list[dict], study: str, out, details: bool) -> None:
    out.print(summary_table(rows, study))
    for row in rows:  # decisions are prose: below the table, where a long one wraps as a paragraph
        for line in (specificity_prose(row), (row.get("gate") or {}).get("reason", row.get("error", ""))):
            if line:
                out.print(f"  trial {row['trial']}: {line}", highlight=False)
    for row in rows if details else []:
        g = row.get("gate")
        if not g:
            continue
        table = _task_table(row["trial"], row["status"], g)
        out.print(table)
        ratio = "n/a" if g["pooled_odds_ratio"] is None else f"{g['pooled_odds_ratio']:.3g}"
        out.print(f"pooled CMH p {g['pooled_p']:.3g}, odds ratio {ratio}")
        for flag in g["flags"]:
            out.print(f"  note: {flag}", highlight=False)


def summary_table(rows: list[dict], study: str):
    """One row per promoted trial, fitting 80 columns; the decisions follow the table."""
    from rich import box
    from rich.table import Table

    # Collapsed padding, no edge: nine columns in 80 (the specificity column came last).
    summary = Table(title=f"promotions of {study!r}", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
                    title_justify="left")
    # "look": which candidate of the study this decision is (its task tests so far in brackets);
    # "specific": the specificity controls' verdict, its spreads in the prose below the table
    for column in ("trial", "status", "refusal", "base", "best p", "Holm p", "pooled p", "look", "specific"):
        summary.add_column(column, no_wrap=True, justify="left" if column in ("status", "specific") else "right")
    for row in rows:
        c, g = row.get("confirmation") or {}, row.get("gate") or {}
        tasks = g.get("tasks", [])
        summary.add_row(str(row["trial"]), row["status"], f"{c['refusal']:.3f}" if c else "", f"{c['base_refusal']:.3f}" if c else "",
                        f"{min(t['p'] for t in tasks):.3g}" if tasks else "",
                        f"{min(t['p_holm'] for t in tasks):.3g}" if tasks else "",
                        f"{g['pooled_p']:.3g}" if g else "", f"{g.get('look', 1)} ({g.get('tested', len(tasks))})" if g else "",
                        specific_cell(row))
    return summary


def _controls(row: dict) -> dict | None:
    """A report row's specificity controls: its confirmation's, or a skipped trial's own."""
    c = row.get("confirmation") or {}
    return row.get("controls") or c.get("controls") or ({"specific": c["specific"]} if "specific" in c else None)


def specific_cell(row: dict) -> str:
    """``yes`` / ``no`` / ``not run`` (a confirmation that ran no controls), or blank (no confirmation)."""
    controls = _controls(row)
    if not controls and not row.get("confirmation"):
        return ""
    verdict = (controls or {}).get("specific")
    return "not run" if verdict is None else "yes" if verdict else "no"


def specificity_prose(row: dict) -> str:
    """The controls' finding on a report row in words (see search.analysis), when there is one."""
    from abliterate.search.analysis import specificity_line, specificity_words
    from abliterate.storage.records import Status

    if row["status"] == Status.SKIPPED:
        return f"{specificity_words(_controls(row))} (abliterate controls); skipped, --include-not-specific promotes it"
    return specificity_line(row.get("confirmation") or {}) or ""


def _task_table(trial: int, status: str, g: dict):
    from rich import box
    from rich.table import Table

    table = Table(title=f"trial {trial}: {status} (rule {g['rule']['rule']}, {g['rule']['test']}, alpha {g['rule']['alpha']})",
                  box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for column in ("task", "candidate", "baseline", "p", "p (Holm)", "p (BH)"):
        table.add_column(column, overflow="fold", justify="left" if column == "task" else "right")
    for t in g["tasks"]:
        c = t["counts"]
        table.add_row(c["task"], f"{c['candidate_pass']}/{c['candidate_n']}", f"{c['baseline_pass']}/{c['baseline_n']}",
                      f"{t['p']:.3g}", f"{t['p_holm']:.3g}", f"{t['p_bh']:.3g}")
    return table
