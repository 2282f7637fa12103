"""The one place that opens a study database: Optuna's RDB storage plus the project's tables."""

from __future__ import annotations

import warnings

from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from storage.errors import DatabaseUnreachable, StorageError
from storage.stale import HeartbeatStorage, RetrySameCandidate
from storage.tables import ensure_schema
from storage.urls import normalize_url, redacted


def open_storage(url: str | None = None, heartbeat_interval: int = 60, grace_period: int = 600, max_retry: int = 3) -> RDBStorage:
    """Optuna storage at ``url`` with heartbeats, whose stale trials are retried as the same
    candidate up to ``max_retry`` times (see storage.stale); the project's tables are created on
    first use.

    Heartbeats only mark a trial stale after ``grace_period`` seconds without one, so a GPU
    trial that takes minutes between heartbeats is never failed while its worker lives.
    """
    url = normalize_url(url)
    engine_kwargs = {"pool_pre_ping": True} if url.startswith("postgresql") else {"connect_args": {"timeout": 30}}
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna 5 but are exactly what crash recovery needs.
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = HeartbeatStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetrySameCandidate(max_retry=max_retry),
            )
        ensure_schema(storage.engine)
    except OperationalError as error:
        first = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise DatabaseUnreachable(f"cannot reach the database at {redacted(url)} ({first}); check the URL, that the server runs and that the database exists") from None
    except SQLAlchemyError as error:
        raise StorageError(f"cannot open storage {redacted(url)}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    return storage
