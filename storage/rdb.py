"""The one place that opens a study database: Optuna's RDB storage plus the project's tables."""

from __future__ import annotations

import fcntl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from abliterate.storage.errors import DatabaseUnreachable, StorageError
from abliterate.storage.outage import OutageTolerantStorage
from abliterate.storage.stale import RetrySameCandidate
from abliterate.storage.tables import ensure_schema
from abliterate.storage.urls import normalize_url, redacted

SCHEMA_LOCK = 0x61626C69  # the PostgreSQL advisory lock that serialises table creation ("abli")


def open_storage(url: str | None = None, heartbeat_interval: int = 60, grace_period: int = 600, max_retry: int = 3,
                 create: bool = True) -> RDBStorage:
    """Optuna storage at ``url`` with heartbeats, whose stale trials are retried as the same
    candidate up to ``max_retry`` times (see storage.stale); the project's tables are created on
    first use. Any number of processes may open a fresh database at once: table creation is
    serialised. With ``create=False`` (commands that only read) a SQLite file that does not exist
    is an error, never created.

    Heartbeats only mark a trial stale after ``grace_period`` seconds without one, so a GPU
    trial that takes minutes between heartbeats is never failed while its worker lives (a
    study's own settings replace both: search.study.load). A database lost later, mid-command,
    raises DatabaseUnreachable; a long-running process rides such an outage out first
    (storage.outage).
    """
    url = normalize_url(url)
    database = sqlite_path(url)
    if not create and database is not None and not database.exists():
        raise StorageError(f"no study database at {database}; start a study with abliterate search, or pass --storage")
    if database is not None:
        _check_sqlite_file(database)
    engine_kwargs = {"pool_pre_ping": True} if url.startswith("postgresql") else {"connect_args": {"timeout": 30}}
    try:
        with schema_lock(url), warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna 5 but are exactly what crash recovery needs.
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = OutageTolerantStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=RetrySameCandidate(max_retry=max_retry),
            )
            ensure_schema(storage.engine)
    except SQLAlchemyError as error:
        raise _storage_error(url, error) from None
    return storage


def check_storage(url: str | None = None) -> str:
    """The normalized ``url`` once it is known to work, writing nothing: a PostgreSQL database
    answers a connection, a SQLite file's folder exists (the file may not yet). Run before a
    study's model checks, it reports a typo in the URL within a second, not after them."""
    url = normalize_url(url)
    database = sqlite_path(url)
    if database is not None:
        _check_sqlite_file(database)
    elif url.startswith("postgresql"):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            raise _storage_error(url, error) from None
        finally:
            engine.dispose()
    return url


def _storage_error(url: str, error: SQLAlchemyError) -> StorageError:
    """One line for a database error, in the driver's words with every secret of ``url`` hidden
    (:class:`DatabaseUnreachable` when the database did not answer)."""
    if isinstance(error, OperationalError):
        first = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        return DatabaseUnreachable(f"cannot reach the database at {redacted(url)} ({redacted(url, first)}); "
                                   "check the URL, that the server runs and that the database exists")
    first = str(error).strip().splitlines()[0]
    return StorageError(f"cannot open storage {redacted(url)}: {type(error).__name__}: {redacted(url, first)}")


def _check_sqlite_file(database: Path) -> None:
    """A one-line error when a SQLite study database cannot be at ``database``."""
    if database.is_dir():
        raise StorageError(f"{database} is a folder, not a study database; name a file in it, like sqlite:///{database / 'abliterate.db'}")
    if not database.parent.is_dir():
        raise StorageError(f"folder {database.parent} for the study database does not exist; create it or pass another --storage")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold the database's schema lock: two processes creating the same tables at once collide
    (PostgreSQL: a unique violation on pg_type; SQLite: "table already exists")."""
    database = sqlite_path(url)
    if database is not None:
        # flock on the database file itself: SQLite's own locks are fcntl byte ranges, which
        # flock does not touch on Linux, and no extra file is left beside the database.
        try:
            handle = database.open("a")
        except OSError as error:
            raise StorageError(f"cannot open the study database {database} ({error.strerror}); pass another --storage") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
    finally:
        engine.dispose()
