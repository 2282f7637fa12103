"""Labelled answers, and how well a judge agrees with them.

A labelled set is JSON lines ``{"prompt": ..., "response": ..., "label": ...}`` with ``label`` one
of :data:`objectives.judges.VERDICTS`, or the name of a preset:

* ``uncensorbench``: the 300 reference answers of the ``uncensorbench`` 0.3.7 package (MIT,
  shipped as ``objectives/data/uncensorbench.jsonl``; ``objectives/data/NOTICE.md``): 150 prompts
  over 15 topics, each with one hand-written refusal and one compliance. Clear-cut cases only.
* ``judge-hard``: rows this project wrote and labelled (``objectives/data/judge_hard.jsonl``):
  answers markers get wrong in both directions (warning-then-comply, soft refusals without a
  marker phrase), evasive answers (clarifying questions, topic changes, the harmful core left
  out) and degenerate ones.
* ``refuser-answers``: real greedy answers of the shipped refuser model and of an abliterated
  copy of it (``objectives/data/refuser_answers.jsonl``, written by ``bench/judge_labeled.py``).
* ``real-answers``: real greedy answers of the development model (Qwen2.5-Coder-0.5B-Instruct)
  unedited and under eight edits, labelled by reading each under the rubric of
  ``objectives/data/NOTICE.md``; each row names its edit (``bench/real_answers.py``).

:func:`agreement` compares verdicts with labels: accuracy over the four classes, binary accuracy
(compliance against everything else, which is what a search optimises), per-class precision and
recall, and the confusion matrix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.objectives.judges import COMPLIANCE, VERDICTS

SHIPPED = {"uncensorbench": "uncensorbench.jsonl", "judge-hard": "judge_hard.jsonl", "refuser-answers": "refuser_answers.jsonl",
           "real-answers": "real_answers.jsonl"}
PRESETS = tuple(SHIPPED)
_SLICE = re.compile(r"\[(-?\d*):(-?\d*)\]$")


@dataclass(frozen=True)
class LabeledAnswer:
    prompt: str
    response: str
    label: str


def load_labeled(spec: str) -> list[LabeledAnswer]:
    """The rows of a preset or a JSON-lines file, optionally sliced (``uncensorbench[0:40]``);
    never empty (a one-line error instead)."""
    match = _SLICE.search(spec)
    if match:
        rows = load_labeled(spec[: match.start()])
        start, stop = (int(g) if g else None for g in match.groups())
        chosen = rows[start:stop]
        if not chosen:
            raise AblationError(f"slice [{match.group(1)}:{match.group(2)}] leaves none of the {len(rows)} rows of {spec[: match.start()]!r}")
        return chosen
    if spec in SHIPPED:
        return read_jsonl(Path(str(resources.files("abliterate.objectives") / "data" / SHIPPED[spec])))
    path = Path(spec)
    if not path.is_file():
        raise AblationError(f"labelled set {spec!r} is neither a file nor a preset; give a .jsonl file of "
                            f"{{prompt, response, label}} rows or one of {', '.join(PRESETS)}")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[LabeledAnswer]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AblationError(f"{path} is not UTF-8 text; give a .jsonl file of {{prompt, response, label}} rows") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise AblationError(f"{path} line {number} is not JSON; each line is one {{prompt, response, label}} object") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("prompt", "response", "label")):
            raise AblationError(f"{path} line {number} needs string fields prompt, response and label")
        if row["label"] not in VERDICTS:
            raise AblationError(f"{path} line {number} has label {row['label']!r}; use one of {', '.join(VERDICTS)}")
        rows.append(LabeledAnswer(row["prompt"], row["response"], row["label"]))
    if not rows:
        raise AblationError(f"{path} has no labelled rows")
    return rows


def prefilter_cost(rows: Sequence[LabeledAnswer]) -> dict:
    """What ``--judge-prefilter`` would settle on these rows without asking the judge model.

    The prefilter calls an answer with an early refusal marker a refusal. ``wrong`` counts the
    settled rows whose label is not refusal: the most agreement the prefilter can cost a perfect
    judge (it can cost nothing on rows the judge would have got wrong anyway).
    """
    from abliterate.objectives.llm_judge import opens_with_refusal

    settled = [r.label for r in rows if opens_with_refusal(r.response)]
    wrong = {label: settled.count(label) for label in VERDICTS if label != "refusal" and label in settled}
    return {"rows": len(rows), "settled": len(settled), "wrong": sum(wrong.values()), "wrong_by_label": wrong}


def agreement(labels: Sequence[str], predicted: Sequence[str]) -> dict:
    """Accuracy, binary accuracy, per-class precision/recall and the confusion matrix.

    ``confusion[true][predicted]`` counts rows; precision of a class nobody predicted, and recall
    of a class with no rows, are None (undefined, not zero).
    """
    if len(labels) != len(predicted) or not labels:
        raise AblationError(f"agreement needs as many verdicts as labels (got {len(predicted)} and {len(labels)}), and at least one")
    confusion = {t: {p: 0 for p in VERDICTS} for t in VERDICTS}
    for truth, guess in zip(labels, predicted):
        confusion[truth][guess] += 1
    per_class = {}
    for label in VERDICTS:
        hits = confusion[label][label]
        said = sum(confusion[t][label] for t in VERDICTS)
        support = sum(confusion[label].values())
        per_class[label] = {"precision": hits / said if said else None, "recall": hits / support if support else None,
                            "support": support}
    total = len(labels)
    exact = sum(confusion[t][t] for t in VERDICTS)
    binary = sum((t == COMPLIANCE) == (p == COMPLIANCE) for t, p in zip(labels, predicted))
    return {"rows": total, "accuracy": exact / total, "binary_accuracy": binary / total,
            "per_class": per_class, "confusion": confusion}
