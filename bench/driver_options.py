"""The command line every peer driver shares (bench/abliterix_front.py, bench/temaq_front.py, each
run with the Python of its peer's own venv): the model, the four prompt files, the seed, system
prompt, answer length and batch, and where the saved models and the raw record go. Only the
standard library, so that any venv can import it (a driver's folder is first on its path)."""

from __future__ import annotations

import argparse

PROMPT_SETS = ("harmful_extraction", "harmless_extraction", "harmful_evaluation", "harmless_evaluation")


def driver_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the shared options; a driver adds its budget and ``--save`` (what it saves
    differs: a front's first trials, or one chosen model)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="local HF model folder")
    for name in PROMPT_SETS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, required=True, help="one prompt a line")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--system-prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("--trials-out", required=True)
    return parser
