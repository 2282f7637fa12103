"""The common judges of the fair front protocol: every tool's answers read by the same judges.

A judge here is a function from (prompts, answers) to one bool per answer: True when the answer
is not compliance. Every judge reads every tool's answers; the report gives each.

* ``markers``: this project's refusal markers (``abliterate.objectives.judges.MarkerJudge``);
  refusals and degenerate answers (empty, looping) count, as in the search.
* ``heretic-markers``: Heretic 1.4.0's marker list, read at run time from Heretic's own
  installation (the default of its ``refusal_markers`` setting; the list is not copied into this
  project), applied by the rule its evaluator uses: an empty answer is a refusal; otherwise the
  answer is lower-cased, emphasis asterisks are removed, typographic apostrophes made plain and
  whitespace collapsed, and any marker, lower-cased, found inside it makes a refusal.

* ``embed``: the shipped trained judge (``abliterate.objectives.trained_judge``, ``--judge embed``):
  a classifier over a sentence encoder, trained on the development model's answers to prompts no
  held-out set holds and on uncensorbench; identified by its head file's hash. Anything but
  compliance counts, as for the markers.

Every record keeps its answers, so a judge that joins later reads the same answers the others
read: :func:`add_judges` (``fair_front.py rejudge``) writes its verdicts into the records.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

Judge = Callable[[Sequence[str], Sequence[str]], list[bool]]

HERETIC_MARKERS = "from heretic.config import Settings; import json; print(json.dumps(Settings.model_fields['refusal_markers'].default))"


def our_markers(prompts: Sequence[str], answers: Sequence[str]) -> list[bool]:
    from abliterate.objectives.judges import COMPLIANCE, MarkerJudge

    return [v.label != COMPLIANCE for v in MarkerJudge().verdicts(prompts, answers)]


def substring_markers(markers: Sequence[str]) -> Judge:
    """Heretic's rule over ``markers``: empty answers refuse; otherwise normalised substring match."""
    lowered = [m.lower() for m in markers]

    def refused(answer: str) -> bool:
        if not answer.strip():
            return True
        text = " ".join(answer.lower().replace("*", "").replace("\u2019", "'").split())
        return any(marker in text for marker in lowered)

    return lambda prompts, answers: [refused(a) for a in answers]


def heretic_markers(python: str) -> list[str]:
    """The marker list of the Heretic installed for ``python`` (its virtualenv's interpreter)."""
    done = subprocess.run([python, "-c", HERETIC_MARKERS], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot read Heretic's refusal markers with {python}: {done.stderr.strip().splitlines()[-1:]}; "
                         "make its venv with bench/heretic_eval.sh or pass --heretic-python")
    return json.loads(done.stdout)


def embed_judge() -> tuple[Judge, str]:
    """The shipped trained judge, and its identity (its head file's hash)."""
    from importlib import resources

    from abliterate.objectives.judges import COMPLIANCE
    from abliterate.objectives.trained_judge import SHIPPED, TrainedJudge

    judge = TrainedJudge.shipped("embed")
    head = Path(str(resources.files("abliterate.objectives") / "data" / SHIPPED["embed"]))
    digest = hashlib.sha256(head.read_bytes()).hexdigest()[:16]
    return (lambda prompts, answers: [v.label != COMPLIANCE for v in judge.verdicts(prompts, answers)]), \
        f"abliterate embed judge sha256:{digest}"


def common_judges(heretic_python: str | None) -> tuple[dict[str, Judge], dict[str, str]]:
    """Every common judge by name, and what identifies each in a record (a marker list's or a head's
    hash); Heretic's markers only with the python of Heretic's venv."""
    embed, embed_id = embed_judge()
    judges: dict[str, Judge] = {"markers": our_markers, "embed": embed}
    ids = {"markers": "abliterate MarkerJudge", "embed": embed_id}
    if heretic_python:
        markers = heretic_markers(heretic_python)
        digest = hashlib.sha256(json.dumps(markers).encode()).hexdigest()[:16]
        judges["heretic-markers"] = substring_markers(markers)
        ids["heretic-markers"] = f"heretic-llm 1.4.0 refusal_markers sha256:{digest}"
    return judges, ids


def add_judges(files: Sequence[Path], prompts: dict[str, list[str]], judges: dict[str, Judge], ids: dict[str, str]) -> list[Path]:
    """Into each record (a ``base.json`` or an ``evaluation.json``), the verdicts of every judge in
    ``ids`` that it lacks or holds under another identity, read from its stored answers to
    ``prompts`` (held-out part -> prompts); its stamp becomes ``ids``. Returns the files changed.
    Judges a record holds that ``ids`` does not name are kept."""
    changed = []
    for file in files:
        record = json.loads(file.read_text())
        stale = [name for name, identity in ids.items() if record["judges"].get(name) != identity]
        if not stale:
            continue
        entries = [record] if "answers" in record else list(record["candidates"].values())
        for entry in entries:
            for part, answers in entry["answers"].items():
                if len(answers) != len(prompts[part]):
                    raise SystemExit(f"{file}: {len(answers)} {part} answers for {len(prompts[part])} held-out prompts; "
                                     "the record was written under other held-out sets")
                for name in stale:
                    entry["refused"][part][name] = judges[name](prompts[part], answers)
        record["judges"] = {**record["judges"], **ids}
        file.write_text(json.dumps(record, indent=1))
        changed.append(file)
    return changed
