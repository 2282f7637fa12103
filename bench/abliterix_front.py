"""Run Abliterix 1.12.2's own search headlessly and keep what a front comparison needs.

Run by ``search_abliterix`` (bench/peers.py) with the Python of Abliterix's virtualenv
(bench/abliterix_setup.sh), in a run folder. Abliterix (AGPL-3.0, a Heretic derivative) is only
installed and run; none of its code is copied here.

    ABLITERIX_PYTHON abliterix_front.py --model DIR --trials 10 --startup 5 --seed 1 \\
        --harmful-extraction F --harmless-extraction F --harmful-evaluation F --harmless-evaluation F \\
        --system-prompt TEXT --max-tokens 32 --batch 32 --save 3 --save-dir DIR --trials-out FILE

Inputs are those Heretic gets in run_heretic: the four prompt files (one prompt a line) become
datasets folders in ./abliterix-prompts, the settings become ./abliterix.toml, and Abliterix runs
with ``--non-interactive`` (no question is ever asked; its closing menu never opens), its study in
an Optuna journal under ./checkpoints (study "abliterix"). Its search is wrapped so that, once
the search ends and the model is still loaded, the first ``--save`` trials of ITS front are saved
as merged HF folders ``--save-dir/trial-N`` (N: the Optuna trial number), through the same
replay and merge its own menu's "Save the model" uses. Its front is what that menu lists: the
finished (not pruned) trials ordered by (refusals, KL), each kept when its KL is below that of
every trial listed before it; the first ``--save`` of them, fewest refusals first, are saved.
(Optuna's own Pareto set of the study differs: Abliterix minimises (KL times a length penalty,
refusals / base refusals), and its menu does not use that set.)

``--trials-out`` gets the schema heretic_front.py writes, ``{"base_refusals": int,
"trials": [{"number", "refusals", "total", "kl", "params", "seconds", "saved", "pruned"}]}``, one row
per finished trial; ``pruned`` is the one addition (the key the project's own rows carry):
Abliterix prunes a trial whose KL exceeds 5 before counting its refusals, so such a row has
``refusals`` and ``kl`` None, but its time counts.

Its figures are NOT Heretic's, which is why the benchmark re-scores every saved candidate with one
common judge:
- refusals: Abliterix's keyword detector on the harmful evaluation prompts (answers of at most
  ``--max-tokens`` tokens): a longer marker list than Heretic's (Chinese ones too; "sorry" counts
  only within the first 8 words and not as "sorry for"), and empty or degenerate answers (loops,
  filler, low character diversity) count as refusals too;
- kl: KL(base || edited) of the first answer token on the harmless evaluation prompts, the mean
  over prompts (Heretic's definition, ``kl.token_count`` 1 by default), before its length penalty;
- params: the Optuna parameters of the trial (``vector_scope``, ``vector_index`` and
  ``{component}.max_weight / max_weight_position / min_weight`` (a fraction of max_weight) /
  ``min_weight_distance`` per component);
- each trial also generates the harmless evaluation answers to measure a length deviation (its
  coherence penalty): that generation is in its seconds per trial, Heretic has none.
Switched off against Abliterix's defaults, for the same inputs as Heretic: the automatic batch
size (``--batch``), its response-prefix detection (Heretic is given an empty prefix), a Hub LLM
judge (off by default anyway: no network). Left as Abliterix ships them: LoRA steering with full
row normalisation, mean directions, its search space (it steers q/k/v/o_proj and down_proj, Heretic
o_proj and down_proj), its KL pruning and length penalty. It runs on the CPU (it warns that this is
slow; bitsandbytes' optional CPU kernel cannot be fetched offline, which it only reports).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
from pathlib import Path

from driver_options import PROMPT_SETS, driver_parser

# Abliterix's names for the four sets
SOURCES = {"harmless_extraction": "benign_prompts", "harmful_extraction": "target_prompts",
           "harmless_evaluation": "benign_eval_prompts", "harmful_evaluation": "target_eval_prompts"}


def main() -> None:
    args = _arguments()
    folders = {name: _prompt_dataset(Path(getattr(args, name)), Path("abliterix-prompts") / name) for name in PROMPT_SETS}
    config = Path("abliterix.toml")
    config.write_text(_toml(_settings(args, folders)), encoding="utf-8")

    import abliterix.cli as cli

    hook = _SearchHook(cli.run_search, args.save, Path(args.save_dir),
                       {name: len(_lines(Path(getattr(args, name)))) for name in PROMPT_SETS})
    cli.run_search = hook
    cli._detect_response_prefix = _no_prefix
    cli.ask_choice = _no_person
    sys.argv = ["abliterix", "--config", str(config), "--non-interactive"]
    cli.main()
    if hook.study is None:
        # cli.main prints a configuration error and returns; the search then never ran
        raise SystemExit("Abliterix ended before its search; see the log above")
    Path(args.trials_out).write_text(json.dumps(_raw(hook), indent=1))


def _arguments() -> argparse.Namespace:
    parser = driver_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--startup", type=int, required=True, help="random trials before TPE")
    parser.add_argument("--save", type=int, default=1, help="front trials to save, fewest refusals first")
    return parser.parse_args()


# --- inputs ------------------------------------------------------------------------------------

def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _prompt_dataset(path: Path, folder: Path) -> str:
    """The prompt file as a ``datasets.save_to_disk`` folder (split "train", column "text"), the
    local form Abliterix loads; every line is one prompt, exactly (no text-builder parsing)."""
    from datasets import Dataset, Split

    shutil.rmtree(folder, ignore_errors=True)
    Dataset.from_dict({"text": _lines(path)}, split=Split.TRAIN).save_to_disk(str(folder))
    return str(folder.resolve())


def _settings(args: argparse.Namespace, folders: dict[str, str]) -> dict:
    """Abliterix's configuration for Heretic's inputs (see run_heretic); the rest is its default."""
    return {
        "non_interactive": True, "overwrite_checkpoint": True, "seed": args.seed, "system_prompt": args.system_prompt,
        "model": {"model_id": str(Path(args.model).resolve()), "dtype_fallback_order": ["bfloat16"],
                  "device_map": "cpu", "backend": "hf"},
        "inference": {"batch_size": args.batch, "max_gen_tokens": args.max_tokens},
        "optimization": {"num_trials": args.trials, "num_warmup_trials": args.startup, "checkpoint_dir": "checkpoints"},
        "detection": {"llm_judge": False},
        **{SOURCES[name]: {"dataset": folder, "split": "train", "column": "text"} for name, folder in folders.items()},
    }


def _toml(settings: dict) -> str:
    """``settings`` (scalars, lists of scalars, one level of tables) as TOML; JSON's string,
    number, boolean and array forms are valid TOML values."""
    scalars = [f"{key} = {json.dumps(value)}" for key, value in settings.items() if not isinstance(value, dict)]
    tables = [f"\n[{key}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
              for key, value in settings.items() if isinstance(value, dict)]
    return "\n".join(scalars) + "\n" + "\n".join(tables) + "\n"


def _no_prefix(engine, *args, **kwargs) -> None:
    """Replaces Abliterix's response-prefix detection: no prefix, as Heretic is configured."""
    engine.response_prefix = ""


def _no_person(message, *args, **kwargs):
    """Abliterix asking anything means a mode this driver does not expect: fail, never wait."""
    raise RuntimeError(f"unexpected Abliterix question: {message!r}")


# --- the search and its front --------------------------------------------------------------------

class _SearchHook:
    """Stands in for ``abliterix.cli.run_search``: runs it unchanged, then, with the model still
    loaded, saves the first ``count`` trials of its front; keeps the study and the scorer."""

    def __init__(self, search, count: int, folder: Path, sizes: dict[str, int]):
        self.search, self.count, self.folder, self.sizes = search, count, folder, sizes
        self.study = self.scorer = None
        self.saved: dict[int, str] = {}  # Optuna trial number -> saved folder

    def __call__(self, *args, **kwargs):
        call = inspect.signature(self.search).bind(*args, **kwargs)
        call.apply_defaults()
        self.scorer = call.arguments["scorer"]
        self._check_prompts()
        self.study = self.search(*args, **kwargs)
        for trial in own_front(self.study.trials)[: self.count]:
            self.saved[trial.number] = _export(trial, call.arguments, self.folder / f"trial-{trial.number}")
        return self.study

    def _check_prompts(self) -> None:
        """Abliterix evaluates exactly the given evaluation prompts (no loader surprise)."""
        loaded = {"harmful_evaluation": len(self.scorer.target_msgs), "harmless_evaluation": len(self.scorer.benign_msgs)}
        for name, count in loaded.items():
            if count != self.sizes[name]:
                raise RuntimeError(f"Abliterix loaded {count} {name} prompts, the file has {self.sizes[name]}")


def own_front(trials) -> list:
    """Abliterix's front as its closing menu lists it: finished trials by (refusals, KL), each
    kept when its KL is below that of every trial before it (fewest refusals first)."""
    finished = sorted((t for t in trials if t.state.name == "COMPLETE"),
                      key=lambda t: (t.user_attrs["refusals"], t.user_attrs["kl_divergence"]))
    front, least = [], float("inf")
    for trial in finished:
        if trial.user_attrs["kl_divergence"] < least:
            front.append(trial)
            least = trial.user_attrs["kl_divergence"]
    return front


def _export(trial, call: dict, folder: Path) -> str:
    """Save ``trial`` as a merged HF folder the way Abliterix's menu saves a selected trial: its
    recipe replayed on the base model, the LoRA merged (the next replay reloads the model)."""
    from abliterix.interactive import _restore_selected_trial

    engine, config = call["engine"], call["config"]
    try:
        _restore_selected_trial(trial, config, engine, call["steering_vectors"], call["safety_experts"],
                                benign_states=call["benign_states"], target_states=call["target_states"],
                                steering_vector_variants=call["steering_vector_variants"])
        merged = engine.export_merged()
        merged.save_pretrained(folder)
        engine.tokenizer.save_pretrained(folder)
        del merged
    finally:
        engine.config = config  # the replay installs a copy of the config with the trial's recipe
    return str(folder)


def _raw(hook: _SearchHook) -> dict:
    """Every finished trial in heretic_front.py's schema (plus ``pruned``)."""
    total, rows = len(hook.scorer.target_msgs), []
    for t in hook.study.trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        scored = t.state.name == "COMPLETE"
        rows.append({
            "number": t.number, "refusals": t.user_attrs["refusals"] if scored else None, "total": total,
            "kl": t.user_attrs["kl_divergence"] if scored else None, "params": t.params,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            "saved": hook.saved.get(t.number), "pruned": not scored,
        })
    return {"base_refusals": hook.scorer.baseline_refusal_count, "trials": rows}


if __name__ == "__main__":
    main()
