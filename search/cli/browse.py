"""Commands that look at a study: ``front`` and ``dashboard``."""

from __future__ import annotations

from abliterate.search.cli.common import STORAGE_HELP, add_command, console, port, study_options
from abliterate.storage.records import TrialRecord


def register(commands) -> None:
    front = add_command(commands, "front", "the feasible Pareto front as a table")
    study_options(front)
    front.add_argument("--json", action="store_true")
    front.set_defaults(run=_front)

    dashboard = add_command(commands, "dashboard", "optuna-dashboard on the study storage")
    dashboard.add_argument("--storage", default=None, help=STORAGE_HELP)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=port, default=8080)
    dashboard.add_argument("--artifacts", default=None, metavar="DIR",
                           help="the artifact folder whose plots (attached by analyze, dose and controls) to show (default: "
                                "$ABLITERATE_ARTIFACTS, else abliterate-artifacts beside the SQLite database, or in the current "
                                "folder for PostgreSQL, when it exists)")
    dashboard.set_defaults(run=_dashboard)


def _front(args) -> int:
    import json

    from abliterate.search.baseline import baseline_of
    from abliterate.search.front import feasible_front
    from abliterate.search.study import load
    from abliterate.storage.rdb import open_storage

    study, _ = load(open_storage(args.storage, create=False), args.study)
    if args.json:
        # Each row carries the base model's figures (None when the study has none) so that a reader
        # of the list sees how far each trial moved from them.
        base = baseline_of(study)
        print(json.dumps([{"trial": t.number, "refusal": t.values[0], "kl": t.values[1], "params": t.params,
                           **front_figures(TrialRecord.of(t)),
                           "base": base}
                          for t in feasible_front(study)], indent=2))
        return 0
    print_front(study, console())
    return 0


def front_figures(record) -> dict:
    """A ``front --json`` row's figures beside its objectives (None where the trial has none)."""
    return {"refusal_rate": record.refusal_rate, "degenerate_rate": record.degenerate_rate, "over_refusal": record.over_refusal,
            "specific": record.specific, "controls": record.controls}


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
    over = any(len(t.values) > 2 for t in rows) or (base is not None and base.get("over_refusal") is not None)
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
                        *((f"{base['over_refusal']:.0%}" if base.get("over_refusal") is not None else "",) if over else ()),
                        f"{base['refusal_rate']:.0%}", f"{base['degenerate_rate']:.0%}"])
    for i, column in enumerate(("trial", "refusal", "KL", *(("over",) if over else ()), "refused", degenerate)):
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


def _dashboard(args) -> int:
    from abliterate.storage.artifacts import artifact_folder
    from abliterate.storage.rdb import open_storage

    storage = open_storage(args.storage, create=False)
    artifacts = artifact_folder(args.storage, args.artifacts)
    if args.artifacts and not artifacts.is_dir():
        from abliterate.ablation.errors import AblationError

        raise AblationError(f"artifact folder {artifacts} does not exist; abliterate analyze, dose and controls make it (--artifacts DIR)")
    _check_port(args.host, args.port)
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    # The plots of analyze, dose and controls show once the default folder exists (any of them makes it).
    artifact_store = FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)"
          + (f"; plots from {artifacts}" if artifact_store else ""))
    run_server(storage, host=args.host, port=args.port, artifact_store=artifact_store)
    return 0


def _check_port(host: str, port: int) -> None:
    """A one-line error when ``host:port`` cannot be served (the server would print a traceback)."""
    import socket

    from abliterate.ablation.errors import AblationError

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise AblationError(f"cannot serve on {host}:{port} ({error.strerror}); pass another --port") from None
