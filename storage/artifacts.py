"""Where a study's artifacts are kept: the plots and JSON that ``analyze``, ``dose`` and
``controls`` write about it, and the Optuna file-system artifact store the dashboard shows.

One rule for every command: ``--artifacts DIR`` when given, else ``$ABLITERATE_ARTIFACTS`` (a
deployment setting), else ``abliterate-artifacts`` beside the study's SQLite database, or in the
current folder for PostgreSQL. A study's files go in a sub-folder named after it
(:func:`study_folder`); the store's own files (named by artifact id) sit at the top.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENVIRONMENT = "ABLITERATE_ARTIFACTS"
FOLDER = "abliterate-artifacts"


def artifact_folder(storage_url: str | None, given: str | os.PathLike | None = None) -> Path:
    """The artifact folder of the studies in ``storage_url`` (None: the default storage), absolute."""
    from abliterate.storage.rdb import sqlite_path
    from abliterate.storage.urls import normalize_url

    if given is None:
        given = os.environ.get(ENVIRONMENT) or None
    if given is not None:
        return Path(given).expanduser().resolve()
    database = sqlite_path(normalize_url(storage_url))
    return (database.parent if database is not None else Path.cwd()) / FOLDER


def study_folder(artifacts: Path, study_name: str, trial: int | None = None) -> Path:
    """Where the files about ``study_name`` (and its ``trial``) go inside ``artifacts``. Characters a
    folder name should not hold become ``_``, so any study name stays one folder inside."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", study_name).lstrip(".") or "_"
    folder = artifacts / name
    return folder if trial is None else folder / f"trial-{trial}"
