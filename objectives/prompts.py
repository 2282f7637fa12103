"""Prompt sources.

For now: plain text files, one prompt per line, and the small demo sets shipped in
``objectives/data``. Blank lines are ignored and duplicates dropped (first one kept).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ablation.errors import AblationError

DEMO_HARMFUL = "demo_harmful.txt"
DEMO_HARMLESS = "demo_harmless.txt"


def read_prompts(path: str | Path) -> list[str]:
    """The prompts in a text file, one per line; a one-line error for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AblationError(f"prompt file {path} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    prompts = _unique(line.strip() for line in text.splitlines())
    if not prompts:
        raise AblationError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


def demo_prompts(name: str) -> list[str]:
    """One of the small prompt sets shipped with the project."""
    return read_prompts(resources.files("objectives") / "data" / name)


def _unique(lines) -> list[str]:
    return list(dict.fromkeys(line for line in lines if line))
