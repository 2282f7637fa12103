"""Run Heretic 1.4.0's own search headlessly and keep what a front comparison needs.

Run by bench/searches.py with the Python of Heretic's virtualenv, in a folder holding
Heretic's ``config.toml``. Heretic (AGPL-3.0) is only installed and run; none of its code is
copied here. This script answers Heretic's closing menu instead of a person: it saves the first
``--save`` trials of the front Heretic lists (its Pareto front by refusals, then KL) as merged
models, then exits. Finally it writes every finished trial (refusals, KL, params, times) as JSON.

    HERETIC_PYTHON heretic_front.py --model DIR --save 3 --save-dir DIR --trials-out FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--save", type=int, default=1, help="front trials to save, lowest refusals first")
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("--trials-out", required=True)
    args = parser.parse_args()

    import heretic.main as heretic

    answers = _MenuAnswers(args.save, Path(args.save_dir))
    heretic.prompt_select = answers.select
    heretic.prompt_path = answers.path
    heretic.prompt_text = answers.text
    sys.argv = ["heretic", "--model", args.model]
    heretic.main()
    _dump_trials(Path("checkpoints"), Path(args.trials_out), answers.saved)


class _MenuAnswers:
    """Answers to Heretic's closing menu: save the first ``count`` listed trials, then exit."""

    def __init__(self, count: int, folder: Path):
        self.count, self.folder = count, folder
        self.saved: dict[int, str] = {}  # Heretic's trial index -> saved folder
        self._current = None

    def select(self, message: str, choices):
        values = [getattr(c, "value", c) for c in choices]
        if message.startswith("Which trial"):
            trials = [v for v in values if hasattr(v, "user_attrs")]
            waiting = [t for t in trials[: self.count] if t.user_attrs["index"] not in self.saved]
            self._current = waiting[0] if waiting else None
            return self._current or ""
        if message.startswith("What do you want to do"):
            if self._current is not None and self._current.user_attrs["index"] not in self.saved:
                return next(v for v in values if isinstance(v, str) and v.startswith("Save the model"))
            return ""
        raise RuntimeError(f"unexpected Heretic menu: {message!r} {values!r}")

    def path(self, message: str) -> str:
        index = self._current.user_attrs["index"]
        target = self.folder / f"trial-{index}"
        self.saved[index] = str(target)
        return str(target)

    def text(self, message: str, *args, **kwargs) -> str:
        raise RuntimeError(f"unexpected Heretic question: {message!r}")


def _dump_trials(checkpoints: Path, out: Path, saved: dict[int, str]) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (journal,) = checkpoints.glob("*.jsonl")
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="heretic", storage=storage)
    rows = []
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        index = t.user_attrs["index"]
        rows.append({
            "number": index - 1, "refusals": t.user_attrs["refusals"], "total": t.user_attrs["n_bad_prompts"],
            "kl": t.user_attrs["kl_divergence"], "params": t.params,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            "saved": saved.get(index),
        })
    base = study.trials[0].user_attrs["base_refusals"] if study.trials else None
    out.write_text(json.dumps({"base_refusals": base, "trials": rows}, indent=1))


if __name__ == "__main__":
    main()
