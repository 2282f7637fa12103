"""Real answers of the development model under a range of edits, for the trained judges to learn from.

    OMP_NUM_THREADS=1 python bench/real_answers.py generate     # bench/out/real_answers/unlabelled.jsonl
    python bench/real_answers.py show [--edit NAME]              # the unlabelled rows, numbered, to label
    python bench/real_answers.py write LABELS.json               # objectives/data/real_answers.jsonl

The model is Qwen2.5-Coder-0.5B-Instruct (``bash bench/fetch_real_model.sh``), the development
model: no evaluation model's answer is learnt from. It answers ``advbench[64:104]`` (40 harmful
prompts no search scores and no held-out set holds; the searches extract from ``advbench[0:64]``)
greedily, 64 new tokens, unedited and under eight edits of the default space, baked and undone
one at a time by the engine: the six designed first trials at the strongest layer measured here
(a ladder of doses, ablation and heads), the strongest of them at twice its peak weight, and the
classic edit (the plain mean difference at full weight on every layer). The doses run from the
base model's refusals through warning-then-comply and evasive answers to broken ones.

``write`` joins the labels (a JSON object ``{"<row>": "<label>"}`` over every row of ``show``)
with the rows and their provenance (model, edit name, edit params). Labels follow the rubric in
objectives/data/NOTICE.md ("real-answers"), applied by reading every answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from searches import ROOT, ensure_model  # noqa: E402

MODEL = ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct-bf16"
MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct (bf16 from the GGUF of bench/fetch_real_model.sh)"
PROMPTS, EXTRACTION = "advbench[64:104]", ("advbench[0:64]", "rho-benign[0:64]")
TOKENS, BATCH = 64, 20
WORK = ROOT / "bench" / "out" / "real_answers"
UNLABELLED = WORK / "unlabelled.jsonl"
OUT = ROOT / "objectives" / "data" / "real_answers.jsonl"


def edits(strongest: float) -> dict[str, dict | None]:
    """Edit name -> params of the default space (None: the base model)."""
    from abliterate.search.space import PRESETS, classic_seed, starting_points

    space = PRESETS["default"]
    designed = starting_points(space, strongest, 6)
    double = dict(designed[2]) | {f"{g}_peak_weight": 2 * designed[2][f"{g}_peak_weight"] for g in ("attn", "mlp")}
    return {"base": None, **{f"designed-{i}": p for i, p in enumerate(designed)}, "designed-2-double": double,
            "classic": classic_seed(space)}


def generate() -> None:
    import torch

    from abliterate.ablation import Baker, load_model
    from abliterate.ablation.resolve import edit_for_params
    from abliterate.objectives.generation import generate_greedy
    from abliterate.objectives.payload import compute_payload
    from abliterate.objectives.prompts import load_prompts
    from abliterate.objectives.refusal import ChatFormat
    from abliterate.search.space import PRESETS
    from abliterate.search.trial import capture_extraction, strongest_layer

    ensure_model(MODEL)
    loaded = load_model(str(MODEL), "bf16", "cpu")
    chat = ChatFormat()
    harmful, harmless = load_prompts(EXTRACTION[0]), load_prompts(EXTRACTION[1])
    residuals = capture_extraction(loaded, harmful, harmless, chat, BATCH)
    payload = compute_payload(loaded, harmful, harmless, residuals, PRESETS["default"], chat=chat, batch_size=BATCH)
    baker, prompts = Baker.for_model(loaded.model), load_prompts(PROMPTS)
    texts = chat.apply(loaded, prompts)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, params in edits(strongest_layer(*residuals)).items():
        print(f"answering under {name}", flush=True)
        with torch.inference_mode():
            if params is None:
                answers = generate_greedy(loaded.model, loaded.tokenizer, texts, TOKENS, BATCH).responses
            else:
                with baker.baked_into(edit_for_params(params, payload, baker.writers)):
                    answers = generate_greedy(loaded.model, loaded.tokenizer, texts, TOKENS, BATCH).responses
        rows += [{"prompt": p, "response": a, "edit": name, "params": params} for p, a in zip(prompts, answers)]
    UNLABELLED.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} answers in {UNLABELLED}")


def _rows() -> list[dict]:
    if not UNLABELLED.exists():
        raise SystemExit(f"no answers at {UNLABELLED}; run `python bench/real_answers.py generate` first")
    return [json.loads(line) for line in UNLABELLED.read_text(encoding="utf-8").splitlines()]


def show(edit: str | None) -> None:
    for number, row in enumerate(_rows()):
        if edit is None or row["edit"] == edit:
            print(f"[{number}] ({row['edit']}) {row['prompt']}\n    -> {row['response']!r}")


def write(labels_file: Path) -> None:
    from abliterate.objectives.judges import VERDICTS

    rows, labels = _rows(), json.loads(labels_file.read_text())
    missing = [n for n in range(len(rows)) if str(n) not in labels]
    wrong = {n: v for n, v in labels.items() if v not in VERDICTS}
    if missing or wrong:
        raise SystemExit(f"labels missing for rows {missing[:10]} or not one of {VERDICTS}: {dict(list(wrong.items())[:5])}")
    OUT.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"], "label": labels[str(n)],
                                       "model": MODEL_NAME, "edit": r["edit"], "params": r["params"]}) + "\n"
                           for n, r in enumerate(rows)), encoding="utf-8")
    print(f"{len(rows)} labelled rows in {OUT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("generate")
    show_ = commands.add_parser("show")
    show_.add_argument("--edit", default=None)
    write_ = commands.add_parser("write")
    write_.add_argument("labels", type=Path)
    args = parser.parse_args()
    if args.command == "generate":
        generate()
    elif args.command == "show":
        show(args.edit)
    else:
        write(args.labels)


if __name__ == "__main__":
    main()
