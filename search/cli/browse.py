"""Commands that look at a study: ``front`` and ``dashboard``."""

from __future__ import annotations

from abliterate.search.cli.common import STORAGE_HELP, add_command, console, port, study_options
from abliterate.search.cli.views import print_front
from abliterate.storage.records import CAPABILITY_ACCURACY, TrialRecord


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
            CAPABILITY_ACCURACY: record.capability_accuracy,
            "specific": record.specific, "controls": record.controls}


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
