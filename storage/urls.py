"""Storage URLs: SQLite by default on one machine, PostgreSQL for several workers or machines.

Every message and log line that shows a storage URL, or passes on a database driver's words
about one, goes through :func:`redacted`: no password is ever printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from abliterate.storage.errors import StorageError

DEFAULT_URL = "sqlite:///abliterate.db"
ENVIRONMENT = "ABLITERATE_STORAGE"  # the storage URL when --storage is not given (keeps passwords out of argv)
# A file holding the password of a PostgreSQL URL that gives none (a Docker or Kubernetes secret),
# so that the password is in neither argv nor the environment.
PASSWORD_FILE = "ABLITERATE_STORAGE_PASSWORD_FILE"
_HINT = "use sqlite:///PATH.db or postgresql+psycopg2://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
HIDDEN = "***"


def normalize_url(url: str | None) -> str:
    """A SQLAlchemy URL for ``url``: None means $ABLITERATE_STORAGE or else the default SQLite
    file, a bare ``*.db`` path a SQLite file, ``postgresql://`` the psycopg2 driver. An ``@``
    left unencoded in the password is taken as part of it (a host name holds none). A
    PostgreSQL URL without a password takes the one in the file $ABLITERATE_STORAGE_PASSWORD_FILE
    names, when set (its first line). Anything else is a one-line error."""
    url = url or os.environ.get(ENVIRONMENT)
    if not url:
        return DEFAULT_URL
    if "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        parsed = _parse(url)
    except ArgumentError:
        raise StorageError(f"bad storage URL {redacted(url)!r}; {_HINT}") from None
    except ValueError:  # e.g. a port that is not a number (Python's words would repeat the URL)
        raise StorageError(f"bad storage URL {redacted(url)!r} (the port is not a number); {_HINT}") from None
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"unsupported storage {parsed.get_backend_name()!r} in {redacted(url)}; {_HINT}")
    if parsed.get_backend_name() == "postgresql" and not parsed.database:
        raise StorageError(f"storage URL {redacted(url)} names no database; {_HINT}")
    if parsed.get_backend_name() == "postgresql" and parsed.password is None and os.environ.get(PASSWORD_FILE):
        parsed = parsed.set(password=_password_from(Path(os.environ[PASSWORD_FILE])))
    return parsed.render_as_string(hide_password=False)


def _password_from(path: Path) -> str:
    """The first line of ``path``: what ``printf``, ``echo`` and ``openssl rand`` write alike."""
    fix = f"point ${PASSWORD_FILE} at a readable file holding the database password, or unset it"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise StorageError(f"cannot read the storage password file {path} ({error.__class__.__name__}); {fix}") from None
    if not lines or not lines[0]:
        raise StorageError(f"the storage password file {path} is empty; {fix}")
    return lines[0]


def redacted(url: str, text: str | None = None) -> str:
    """``url`` with its password hidden, both the one before ``@`` and any ``password=`` (or
    ``sslpassword=``) query parameter; with ``text`` (a database driver's message about ``url``),
    that text with every secret of ``url`` hidden instead. For messages and logs."""
    if text is not None:
        for secret in sorted(_secrets(url), key=len, reverse=True):
            text = text.replace(secret, HIDDEN)
        return text
    try:
        parsed = _parse(url)
        query = {key: HIDDEN if _is_secret(key) else value for key, value in parsed.query.items()}
        return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", HIDDEN)
    except (ArgumentError, ValueError):
        # Unparseable: still hide all that sits between "user:" and the last "@" of the
        # authority, and every password parameter.
        url = re.sub(r"(://[^:/@]*:).*@", rf"\1{HIDDEN}@", _encode_userinfo(url))
        return re.sub(r"([?&][^=&]*password=)[^&]*", rf"\1{HIDDEN}", url, flags=re.IGNORECASE)


def _parse(url: str) -> URL:
    return make_url(_encode_userinfo(url))


def _encode_userinfo(url: str) -> str:
    """``url`` with every ``@`` of its user info percent-encoded. The user info ends at the last
    ``@`` before the path or query that follows the first ``@``: SQLAlchemy (like libpq) ends it
    at the first, and would take the rest of such a password for the host."""
    scheme, separator, rest = url.partition("://")
    first = rest.find("@")
    if not separator or first < 0:
        return url
    end = min((i for i in (rest.find("/", first), rest.find("?", first)) if i >= 0), default=len(rest))
    userinfo, _, host = rest[:end].rpartition("@")
    return f"{scheme}://{userinfo.replace('@', '%40')}@{host}{rest[end:]}"


def _is_secret(key: str) -> bool:
    return "password" in key.lower()


def _secrets(url: str) -> set[str]:
    """Every form of a secret of ``url`` that a message could quote: the password as given and
    as parsed, and the values of its password parameters."""
    try:
        parsed = _parse(url)
    except (ArgumentError, ValueError):
        match = re.search(r"://[^:/@]*:(.*)@", _encode_userinfo(url))
        return {match[1], match[1].replace("%40", "@")} - {""} if match else set()
    values = [parsed.password] + [v for key, value in parsed.query.items() if _is_secret(key)
                                  for v in (value if isinstance(value, tuple) else (value,))]
    found = set()
    for value in values:
        if value:
            found |= {str(value), str(value).replace("@", "%40")}
    return found
