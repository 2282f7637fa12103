"""The peer tools the front benchmark runs beside ours, side by side: Heretic 1.4.0, Abliterix 1.12.2
and temaq-abliterated 1.1.1.

Heretic and Abliterix are AGPL-3.0, temaq MIT; each is only installed in a virtualenv of its own
(bench/heretic_eval.sh, bench/abliterix_setup.sh, bench/temaq_setup.sh) and run there by a small
driver (bench/heretic_front.py, bench/abliterix_front.py, bench/temaq_front.py) that answers for
the person at its end and writes raw.json. Each ``search_*`` gives its tool the same inputs (the
prompt files of searches.prompt_files, answers of ``new_tokens`` tokens, BATCH prompts a
batch, the budget, the seed, the model's system prompt, no network), saves the first ``keep``
trials of the tool's own front as merged model folders under ``run_dir/candidates`` (temaq ends
with one chosen candidate, so at most that one) and returns (raw record, wall seconds, CPU seconds
of the child); bench/fair_front.py records it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from driver_options import PROMPT_SETS  # noqa: E402
from searches import BATCH, NEW_TOKENS, QWEN_SYSTEM, ROOT, children_cpu, heretic_startup, search_heretic  # noqa: E402

__all__ = ["search_abliterix", "search_heretic", "search_temaq"]  # Heretic's search is searches.py's, named here beside its peers


def search_abliterix(run_dir: Path, budget: int, seed: int, prompts: dict[str, Path], model: Path, python: str, keep: int,
                     system: str = QWEN_SYSTEM, new_tokens: int = NEW_TOKENS) -> tuple[dict, float, float]:
    """Abliterix 1.12.2's own search with Heretic's inputs: ``budget`` trials, of which
    heretic_startup(budget) random, in ``run_dir`` with ``python`` of Abliterix's venv; the first
    ``keep`` trials of its front saved under ``run_dir/candidates``; (its raw record, wall seconds,
    CPU seconds of the child). A failed run raises CalledProcessError (see log.txt)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a fresh study, as Heretic's
    return _drive("abliterix_front.py", run_dir, python, prompts, model, seed, system, new_tokens, keep,
                  ["--trials", str(budget), "--startup", str(heretic_startup(budget))])


def search_temaq(run_dir: Path, budget: int, seed: int, prompts: dict[str, Path], model: Path, python: str, keep: int,
                 system: str = QWEN_SYSTEM, new_tokens: int = NEW_TOKENS, seconds: float = 0.0) -> tuple[dict, float, float]:
    """temaq-abliterated 1.1.1's own search with Heretic's inputs (mapped onto its two prompt lists
    as bench/temaq_front.py says): at most ``budget`` trials and, when ``seconds`` > 0, at most that
    many wall seconds of search phase, in ``run_dir`` with ``python`` of temaq's venv; its one chosen
    candidate saved under ``run_dir/candidates`` when ``keep`` > 0; (its raw record, wall seconds,
    CPU seconds of the child). A failed run raises CalledProcessError (see log.txt)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return _drive("temaq_front.py", run_dir, python, prompts, model, seed, system, new_tokens, keep,
                  ["--trials", str(budget), "--seconds", str(seconds)])


def _drive(driver: str, run_dir: Path, python: str, prompts: dict[str, Path], model: Path, seed: int, system: str,
           new_tokens: int, keep: int, budget: list[str]) -> tuple[dict, float, float]:
    """Runs ``bench/<driver>`` with ``python`` in ``run_dir`` on the shared options
    (bench/driver_options.py) and its ``budget`` options; (its raw.json, wall seconds, CPU seconds
    of the child). A failed run raises CalledProcessError (see log.txt)."""
    command = [python, str(ROOT / "bench" / driver), "--model", str(model), *budget, "--seed", str(seed),
               "--system-prompt", system, "--max-tokens", str(new_tokens), "--batch", str(BATCH),
               "--save", str(keep), "--save-dir", str(run_dir / "candidates"), "--trials-out", str(run_dir / "raw.json")]
    for name in PROMPT_SETS:
        command += ["--" + name.replace("_", "-"), str(prompts[name])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start, cpu = time.time(), children_cpu()
    # stdin from /dev/null: temaq opens its menus on a terminal, and no driver may be handed the
    # terminal of a benchmark started from one
    with open(run_dir / "log.txt", "w") as log:
        subprocess.run(command, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    return json.loads((run_dir / "raw.json").read_text()), time.time() - start, children_cpu() - cpu
