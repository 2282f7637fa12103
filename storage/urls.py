"""Storage URLs: SQLite by default on one machine, PostgreSQL for several workers or machines."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import StorageError

DEFAULT_URL = "sqlite:///abliterate.db"
ENVIRONMENT = "ABLITERATE_STORAGE"  # the storage URL when --storage is not given (keeps passwords out of argv)
_HINT = "use sqlite:///PATH.db or postgresql+psycopg2://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def normalize_url(url: str | None) -> str:
    """A SQLAlchemy URL for ``url``: None means $ABLITERATE_STORAGE or else the default SQLite
    file, a bare ``*.db`` path a SQLite file, ``postgresql://`` the psycopg2 driver. Anything
    else is a one-line error."""
    url = url or os.environ.get(ENVIRONMENT)
    if not url:
        return DEFAULT_URL
    if "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"bad storage URL {redacted(url)!r}; {_HINT}") from None
    except ValueError as error:  # e.g. a port that is not a number
        raise StorageError(f"bad storage URL {redacted(url)!r} ({error}); {_HINT}") from None
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"unsupported storage {parsed.get_backend_name()!r} in {redacted(url)}; {_HINT}")
    if parsed.get_backend_name() == "postgresql" and not parsed.database:
        raise StorageError(f"storage URL {redacted(url)} names no database; {_HINT}")
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable: still hide whatever sits between "user:" and "@".
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
