"""Run temaq-abliterated 1.1.1's own search headlessly and keep what a front comparison needs.

Run by ``search_temaq`` (bench/peers.py) with the Python of temaq's virtualenv
(bench/temaq_setup.sh), in a run folder. temaq (MIT) is only installed and called through its
own entry point ``temaq_abliterated.cli.main``; none of its code is copied here.

    TEMAQ_PYTHON temaq_front.py --model DIR --trials 10 [--seconds 600] --seed 1 \\
        --harmful-extraction F --harmless-extraction F --harmful-evaluation F --harmless-evaluation F \\
        --system-prompt TEXT --max-tokens 32 --batch 32 --save 1 --save-dir DIR --trials-out FILE

temaq (its SCAPE search: a seed grid, then a pattern search on a surrogate objective, then a
full-generation check of its best candidates) ends with ONE chosen candidate, so ``--trials-out``
holds one row. Its inputs are those Heretic gets in search_heretic (bench/searches.py),
mapped onto temaq's two prompt lists (it has no separate evaluation files):
- harmful extraction: ``--harmful-file``: its refusal directions and, after its "probe hardening"
  (it keeps the prompts the base model refuses at the first token), its search's surrogate
  refusal score;
- harmless extraction: ``--harmless-file``: its refusal directions;
  both files whole (``--n-probe`` their length; by default it takes at most 48 of each on a CPU);
- harmful evaluation: its final full-generation check (the refusal count written here), through
  its ``--verify-dataset`` hook, whose Hub loader is replaced by the file's lines;
- harmless evaluation: the prompts of its KL, in the search and for the chosen candidate (its
  evaluator is handed them in place of the harmless probes; everything else is unchanged).
The system prompt goes in through its TOML settings (``system_prompt``), the answer length as
``--max-new-tokens`` (its check's generation), the seed as ``--seed`` (torch and its search's
random generator), ``--trials`` and ``--seconds`` (its wall-clock ``--time-budget-min`` on the
search phase alone) as its budgets. Its evaluation runs in bf16 on the CPU (``--eval-dtype
bfloat16``: its "auto" may pick int8/int4 evaluation by free RAM, unlike the other tools), with
``OMP_NUM_THREADS`` threads (it would take every physical core) and ``--batch`` prompts a batch
(its generation caps that at 16), and no response prefix (it would append a thinking template's
closing tag; Heretic is given none). No person is ever asked: ``--select auto``, ``--restart`` (no
resume menu), and any ``input()`` it still reaches fails the run instead of waiting.

``--trials-out`` gets the schema abliterix_front.py writes, ``{"base_refusals": int|None,
"attempts", "search_seconds", "budget_stopped", "trials": [{"number", "chosen", "refusals",
"total", "kl", "params", "pruned", "seconds", "saved"}]}``, its figures NOT Heretic's (the
benchmark re-scores the saved model with one common judge):
- number: temaq's attempt number of the chosen candidate (1-based); chosen: true (the fair
  protocol's candidate rule takes a chosen row as the tool's one candidate);
- refusals: its marker detector (it stops a sequence at the first marker) on the harmful
  evaluation prompts, answers of at most ``--max-tokens`` tokens; None when its gate let no
  candidate into that check (first-token surrogate refusal above 0.4) and it exported its best
  surrogate point unchecked;
- kl: its KL(base || edited) over the first 8 answer tokens, teacher-forced on the base model's
  own continuations (``--kl-tokens`` 8, its default), on the harmless evaluation prompts; None
  when it has none (an attempt its screening rejected before measuring KL);
- params: its AblationParams (direction mode and index, per component a kernel's centre, radius,
  strength and shape);
- seconds: the wall time of its whole run (load, directions, search, check, export).
The model is exported by temaq itself (its shards rewritten from the original safetensors) and
moved to ``--save-dir/trial-N``; its workspace (checkpoints, reports) is ./temaq-work.
"""

from __future__ import annotations

import argparse
import builtins
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from driver_options import PROMPT_SETS, driver_parser

WORK = Path("temaq-work")
STAGING = "temaq-export"  # temaq's output folder under --save-dir, renamed trial-N once N is known


def main() -> None:
    args = _arguments()
    prompts = {name: _lines(Path(getattr(args, name))) for name in PROMPT_SETS}
    shutil.rmtree(WORK, ignore_errors=True)  # a fresh run: no checkpoint, no cached directions
    staging = Path(args.save_dir) / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    _install_hooks(prompts, args.batch)

    from temaq_abliterated import cli

    # cli.main prints a traceback for a failure only when sys.argv holds --debug
    sys.argv = ["temaq-abliterated", "--debug"]
    start = time.time()
    code = cli.main(_temaq_arguments(args, prompts, staging))
    seconds = time.time() - start
    if code != 0:
        raise SystemExit(f"temaq ended with code {code}; see the log above")
    Path(args.trials_out).write_text(json.dumps(_raw(prompts, staging, args, seconds), indent=1))


def _arguments() -> argparse.Namespace:
    parser = driver_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=0, help="search trials (0: temaq's own, 120 on a CPU)")
    parser.add_argument("--seconds", type=float, default=0.0, help="wall-clock budget of the search phase (0: none)")
    parser.add_argument("--save", type=int, default=1, help="0: export nothing; temaq has one candidate to save")
    return parser.parse_args()


def _lines(path: Path) -> list[str]:
    """The prompts of a file, as temaq reads its own prompt files (blank lines dropped)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- inputs ------------------------------------------------------------------------------------

def _temaq_arguments(args: argparse.Namespace, prompts: dict[str, list[str]], staging: Path) -> list[str]:
    """temaq's command line for Heretic's inputs (see the module docstring); the rest is its default."""
    settings = WORK / "temaq.toml"
    WORK.mkdir(parents=True, exist_ok=True)
    # its CLI has no system-prompt flag; its TOML key always wins (a JSON string is a TOML string)
    settings.write_text(f"system_prompt = {json.dumps(args.system_prompt)}\n", encoding="utf-8")
    command = [str(Path(args.model).resolve()), "--config", str(settings), "--workdir", str(WORK),
               "--device", "cpu", "--eval-dtype", "bfloat16", "--seed", str(args.seed),
               "--harmful-file", args.harmful_extraction, "--harmless-file", args.harmless_extraction,
               # all the extraction prompts, as the other tools get (its own default takes at most 48)
               "--n-probe", str(max(len(prompts["harmful_extraction"]), len(prompts["harmless_extraction"]))),
               "--verify-dataset", "harmful_evaluation", "--verify-probes", str(len(prompts["harmful_evaluation"])),
               "--max-new-tokens", str(args.max_tokens), "--select", "auto", "--restart",
               "--output", str(staging), "--overwrite-output"]
    if args.trials > 0:
        command += ["--trials", str(args.trials)]
    if args.seconds > 0:
        command += ["--time-budget-min", str(args.seconds / 60)]
    if args.save < 1:
        command.append("--no-export")
    return command


def _install_hooks(prompts: dict[str, list[str]], batch: int) -> None:
    """Point temaq's evaluation prompts at the files, its threads and batch at ours, drop its
    response prefix, and make any question it asks an error. Its pipeline imports these names from
    their modules when it runs, so replacing the module attributes before cli.main is enough."""
    from temaq_abliterated import cli, probes, surrogate

    def verify_prompts(spec, limit, cache_root, info=None):
        """Stands in for its Hub loader: the harmful evaluation prompts, in file order."""
        if info is not None:
            info["split"] = "file"
        return prompts["harmful_evaluation"][:limit]

    probes.load_verify_prompts = verify_prompts
    surrogate.detect_response_prefix = _no_prefix
    surrogate.FastEvaluator = _evaluator_on(surrogate.FastEvaluator, prompts["harmless_evaluation"])
    cli.detect_environment = _environment_with(cli.detect_environment, batch)
    builtins.input = _no_person


def _evaluator_on(evaluator: type, harmless: list[str]) -> type:
    """temaq's FastEvaluator measuring KL on ``harmless`` instead of its harmless probes."""
    signature = inspect.signature(evaluator.__init__)

    class Evaluator(evaluator):
        def __init__(self, *args, **kwargs):
            call = signature.bind(self, *args, **kwargs)
            call.arguments["harmless"] = list(harmless)
            super().__init__(*call.args[1:], **call.kwargs)

    return Evaluator


def _environment_with(detect, batch: int):
    """temaq's environment detection with the thread count of OMP_NUM_THREADS (it would use every
    physical core) and ``batch`` prompts a batch (it would pick 4 per physical core, at most 16)."""
    def detected(*args, **kwargs):
        report = detect(*args, **kwargs)
        report.torch_threads = int(os.environ.get("OMP_NUM_THREADS") or report.torch_threads)
        report.batch_size = batch
        return report

    return detected


def _no_prefix(tokenizer, system_prompt: str) -> str:
    """Replaces its detection of a thinking template's closing tag: no prefix, as Heretic is configured."""
    return ""


def _no_person(prompt: str = "") -> str:
    """temaq asking anything means a mode this driver does not expect: fail, never wait."""
    raise RuntimeError(f"unexpected temaq question: {prompt!r}")


# --- its result ----------------------------------------------------------------------------------

def _raw(prompts: dict[str, list[str]], staging: Path, args: argparse.Namespace, seconds: float) -> dict:
    """temaq's chosen candidate as the one row of abliterix_front.py's schema, read from the run
    record it writes (report/run_summary.json) and, for its attempt number when no checked
    candidate was chosen, its search checkpoint."""
    summary = json.loads((WORK / "report" / "run_summary.json").read_text(encoding="utf-8"))
    if summary["best_params"] is None:
        raise SystemExit("temaq chose no candidate (it records none when its search left no point)")
    total = len(prompts["harmful_evaluation"])
    checked = next((c for c in summary["candidates"] if c["selected"]), None)
    number = checked["attempt"] if checked else _attempt_of(summary["best_params"], Path(summary["model_dir"]).name)
    saved = None
    if staging.is_dir():
        saved = Path(args.save_dir) / f"trial-{number}"
        shutil.rmtree(saved, ignore_errors=True)
        staging.rename(saved)
    base = summary["baseline_refusal_full_generation"]
    kl = summary["kl_final"]  # NaN when the chosen attempt was screened out before its KL was measured
    row = {"number": number, "chosen": True, "refusals": checked["refusal_n"] if checked else None, "total": total,
           "kl": kl if isinstance(kl, (int, float)) and math.isfinite(kl) else None,
           "params": summary["best_params"], "pruned": False,
           "seconds": seconds, "saved": str(saved.resolve()) if saved else None}
    return {"base_refusals": round(base * total) if base is not None else None, "attempts": summary["attempts"],
            "search_seconds": summary["search_seconds"], "budget_stopped": summary["budget_stopped"], "trials": [row]}


def _attempt_of(params: dict, run_key: str) -> int:
    """The attempt whose parameters temaq exported: the lowest-objective one with exactly those."""
    history = json.loads((WORK / "cache" / "runs" / f"{run_key}.json").read_text(encoding="utf-8"))["history"]
    same = [h for h in history if h.get("params") == params]
    if not same:
        raise SystemExit("temaq's exported parameters are in none of its recorded attempts")
    return min(same, key=lambda h: h["J"] if isinstance(h.get("J"), (int, float)) else float("inf"))["attempt"]


if __name__ == "__main__":
    main()
