"""User-facing errors of the ablation engine.

Every error a user can cause (bad path, unknown architecture, bad prompt file) is an
``AblationError`` whose message is one line naming the problem and the fix. The CLI prints
it as ``error: <message>`` and exits non-zero; anything else is a bug and keeps its traceback.
"""


def first_line(error: BaseException, limit: int | None = None, fallback: str | None = None) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters; ``fallback`` (default:
    the error's type name) when the message is empty. For quoting a library's error in one line."""
    line = (str(error).strip().splitlines() or [type(error).__name__ if fallback is None else fallback])[0]
    return line[:limit] if limit is not None else line


def write_failure(error: Exception) -> str:
    """The OS's words for a failed write, from an ``OSError`` or from the ``SafetensorError`` that
    wraps one ("I/O error: No space left on device (os error 28)"), with the path when given."""
    import re

    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    found = re.search(r"I/O error: (.+?) \(os error \d+\)", str(error))
    return found[1] if found else first_line(error, 160)


class AblationError(Exception):
    """A problem with the user's input, explained in one line."""


class ModelLoadError(AblationError):
    """The model could not be found or loaded."""


class UnsupportedLayout(AblationError):
    """Some part of the model writes into the residual stream in a way we cannot edit."""
