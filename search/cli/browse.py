"""Commands that look at a study: ``front`` and ``dashboard``."""

from __future__ import annotations

from search.cli.common import STORAGE_HELP, add_command, console, port, study_options


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
                           help="an Optuna file-system artifact store to show (the plots analyze and controls attach)")
    dashboard.set_defaults(run=_dashboard)


def _front(args) -> int:
    import json

    from search.front import feasible_front
    from search.study import load
    from storage.rdb import open_storage

    study, _ = load(open_storage(args.storage, create=False), args.study)
    if args.json:
        print(json.dumps([{"trial": t.number, "refusal": t.values[0], "kl": t.values[1], "params": t.params,
                           **{k: t.user_attrs.get(k) for k in ("refusal_rate", "degenerate_rate", "over_refusal", "specific", "controls")}}
                          for t in feasible_front(study)], indent=2))
        return 0
    print_front(study, console())
    return 0


def print_front(study, out) -> None:
    from search.front import feasible_front

    out.print(front_table(study.study_name, feasible_front(study)))


def front_table(study_name: str, trials):
    """The front as a table that fits 80 columns: one row per trial, fewest refusals first."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"feasible Pareto front of {study_name!r}", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    over = any(len(t.values) > 2 for t in trials)  # over-refusal is the third objective
    # With a third column the table still fits 80 columns: "degenerate" is shortened.
    for column in ("trial", "refusal", "KL", *(("over", "refused", "degen") if over else ("refused", "degenerate")), "method", "scope"):
        table.add_column(column, no_wrap=True, justify="left" if column in ("method", "scope") else "right")
    for t in sorted(trials, key=lambda t: tuple(t.values)):
        table.add_row(str(t.number), f"{t.values[0]:.3f}", f"{t.values[1]:.3g}", *((f"{t.values[2]:.0%}",) if over else ()),
                      f"{t.user_attrs.get('refusal_rate', 0):.0%}", f"{t.user_attrs.get('degenerate_rate', 0):.0%}",
                      t.params.get("method", ""), t.params.get("scope", ""))
    return table


def _dashboard(args) -> int:
    from pathlib import Path

    from optuna_dashboard import run_server

    from storage.rdb import open_storage

    storage = open_storage(args.storage, create=False)
    artifact_store = None
    if args.artifacts:
        from optuna.artifacts import FileSystemArtifactStore

        if not Path(args.artifacts).expanduser().is_dir():
            from ablation.errors import AblationError

            raise AblationError(f"artifact folder {args.artifacts} does not exist; abliterate analyze and controls make it (--artifacts DIR)")
        artifact_store = FileSystemArtifactStore(str(Path(args.artifacts).expanduser()))
    _check_port(args.host, args.port)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    run_server(storage, host=args.host, port=args.port, artifact_store=artifact_store)
    return 0


def _check_port(host: str, port: int) -> None:
    """A one-line error when ``host:port`` cannot be served (the server would print a traceback)."""
    import socket

    from ablation.errors import AblationError

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise AblationError(f"cannot serve on {host}:{port} ({error.strerror}); pass another --port") from None
