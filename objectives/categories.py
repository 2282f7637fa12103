"""The category of each prompt of a source, from another column of the same rows.

A prompt source such as ``harmful.csv#prompt[0:64]`` may carry a category per row (``#category``
of the same file). :func:`load_categories` returns one label per prompt that
:func:`objectives.prompts.load_prompts` returns for the same spec: the same rows, the same
cleaning (blank prompts dropped, duplicates dropped with the first kept) and the same slice, so
labels line up with prompts one to one. The refusal cone (``ablation.cone``) groups the harmful
residuals by these labels instead of by k-means.
"""

from __future__ import annotations

from abliterate.ablation.errors import AblationError
from abliterate.objectives.prompts import normalise, raw_entries, split_slice


def load_categories(spec: str, column: str) -> list[str]:
    """One label per prompt of ``spec``, read from ``column`` of the same rows (see the module docstring)."""
    source, window = split_slice(spec.strip())
    path, hash_, fragment = source.rpartition("#")
    if not hash_ or not fragment:
        raise AblationError(f"prompt source {spec!r} names no prompt field, so it has no category column {column!r}; "
                            "use a .csv, .jsonl or .json source written as FILE#PROMPT_FIELD")
    key = fragment.rsplit("/", 1)[0] + "/" if "/" in fragment else ""
    prompts, labels = raw_entries(source), raw_entries(f"{path}#{key}{column}")
    if len(prompts) != len(labels):
        raise AblationError(f"prompt source {spec!r} has {len(prompts)} prompts but {len(labels)} values in column {column!r}; "
                            "give every prompt a category")
    kept: dict[str, str] = {}
    for prompt, label in zip(prompts, labels):
        if prompt.strip():
            kept.setdefault(normalise(prompt), label.strip())
    chosen = list(kept.values())
    return chosen[window] if window is not None else chosen
