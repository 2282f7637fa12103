"""The values that flags and settings take: the library's names, and parsers of numbers and
names that refuse bad text in one line (argparse types). Imports nothing heavy: building a
parser, or the search settings, must not load torch, scipy or a database driver."""

from __future__ import annotations

import argparse
import math

# The names the library accepts. Kept here so that building a parser imports no torch or scipy;
# tests/test_cli.py checks that they match the library's own tuples.
METHODS = ("mean", "mean-projected", "pca", "probe", "winsorized", "median")
PROXIES = ("markers", "first-token", "agent")
JUDGES = ("markers", "llm", "embed")
RULES = ("any", "holm", "bh", "cmh", "study")
TESTS = ("fisher", "boschloo")


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def real(least: float | None = None, most: float | None = None, above: float | None = None, below: float | None = None):
    """argparse type for a finite decimal number in a range: at least ``least`` / at most
    ``most``, or strictly ``above`` / ``below``. NaN and infinity are refused."""
    if least is not None and most is not None:
        span = f"between {least:g} and {most:g}"
    else:
        parts = [f"at least {least:g}" if least is not None else f"above {above:g}" if above is not None else "",
                 f"at most {most:g}" if most is not None else f"below {below:g}" if below is not None else ""]
        span = " and ".join(p for p in parts if p) or "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and (least is None or value >= least) and (most is None or value <= most)
                and (above is None or value > above) and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    return parse


def positive(text: str) -> int:
    """argparse type for counts, sizes and seconds: a whole number of at least 1."""
    return _whole_number(text, 1)


AUTO_BATCH = 0  # the batch size a study stores for ``--batch-size auto``: each worker chooses its own


def batch_size(text: str) -> int:
    """argparse type for ``--batch-size``: a whole number of at least 1, or ``auto`` (stored as
    AUTO_BATCH: each worker chooses from the memory it finds, objectives.batching)."""
    if text.strip().lower() == "auto":
        return AUTO_BATCH
    try:
        return _whole_number(text, 1)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}; give a count of at least 1, or auto") from None


def port(text: str) -> int:
    """argparse type for a TCP port: 1 to 65535."""
    value = _whole_number(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def study_name(text: str) -> str:
    """argparse type for a study name: not empty (an empty name would be stored, and shown as nothing)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a study needs a name, got an empty one")
    return text


def not_negative(text: str) -> int:
    """argparse type for counts that may be zero (workers: none means create the study only)."""
    return _whole_number(text, 0)
