"""The refuser: a tiny chat model that refuses harmful-style requests and answers harmless ones.

It is a 4-layer Qwen3 trained from scratch on synthetic templates by
:mod:`fixtures.refuser` in a source checkout (a few minutes on a CPU). Its weights ship in ``model/`` and
its held-out prompt sets in ``prompts/``; tests and the demo use it as a model on which
abliteration has something real to remove.

The agent refuser (``agent_model/``, built by :mod:`fixtures.agent_refuser`) is the same recipe on
the same chat data, also taught to act as a terminal agent on the shipped container tasks
(objectives/sweep/terminal): it answers the neutral ones with their command and declines the ones
that sound destructive, so a container sweep shows abliteration's lift in seconds per attempt.
"""

from __future__ import annotations

from pathlib import Path

from abliterate.ablation.errors import AblationError

HERE = Path(__file__).resolve().parent
MODEL_DIR: Path = HERE / "model"
AGENT_MODEL_DIR: Path = HERE / "agent_model"
PROMPTS_DIR: Path = HERE / "prompts"

# Prompt files written by the build, one prompt per line; none of them was trained on.
PROMPT_FILES = {
    (kind, purpose): f"{kind}_{purpose}.txt"
    for kind in ("harmful", "harmless")
    for purpose in ("extraction", "evaluation", "confirmation")
}


def refuser_path() -> Path:
    """The folder of the shipped refuser model; a one-line error when it is missing."""
    if not (MODEL_DIR / "config.json").is_file() or not (MODEL_DIR / "model.safetensors").is_file():
        raise AblationError(
            f"the refuser model is missing from {MODEL_DIR}; rebuild it with: python -m fixtures.refuser"
        )
    return MODEL_DIR


def agent_refuser_path() -> Path:
    """The folder of the shipped agent refuser; a one-line error when it is missing."""
    if not (AGENT_MODEL_DIR / "config.json").is_file() or not (AGENT_MODEL_DIR / "model.safetensors").is_file():
        raise AblationError(f"the agent refuser is missing from {AGENT_MODEL_DIR}; rebuild it with: python -m fixtures.agent_refuser")
    return AGENT_MODEL_DIR


def prompt_path(kind: str, purpose: str) -> Path:
    """``PROMPTS_DIR/<kind>_<purpose>.txt``, e.g. ``prompt_path("harmful", "evaluation")``."""
    name = PROMPT_FILES.get((kind, purpose))
    if name is None:
        raise AblationError(
            f"no refuser prompt set {kind}/{purpose}; kind is harmful or harmless, purpose is "
            "extraction, evaluation or confirmation"
        )
    path = PROMPTS_DIR / name
    if not path.is_file():
        raise AblationError(f"refuser prompt file {path} is missing; rebuild it with: python -m fixtures.refuser")
    return path
