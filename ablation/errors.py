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


class AblationError(Exception):
    """A problem with the user's input, explained in one line."""


class ModelLoadError(AblationError):
    """The model could not be found or loaded."""


class UnsupportedLayout(AblationError):
    """Some part of the model writes into the residual stream in a way we cannot edit."""
