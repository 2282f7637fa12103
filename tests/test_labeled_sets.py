"""The shipped labelled answers: what the default suite can check, and (slow) their provenance."""

import json
from importlib import metadata
from pathlib import Path

import pytest

from abliterate.objectives.judges import COMPLIANCE
from abliterate.objectives.labeled import load_labeled


def test_uncensorbench_ships_one_refusal_and_one_compliance_per_prompt():
    rows = load_labeled("uncensorbench")
    assert len(rows) == 300
    assert [r.label for r in rows] == ["refusal", COMPLIANCE] * 150
    assert all(a.prompt == b.prompt and a.response != b.response for a, b in zip(rows[::2], rows[1::2]))
    assert load_labeled("uncensorbench[0:40]") == rows[:40]


@pytest.mark.slow
def test_shipped_uncensorbench_equals_the_package():
    """Needs ``pip install --no-deps -r prompt-sets.txt`` (uncensorbench is not a dependency)."""
    dist = metadata.distribution("uncensorbench")
    assert dist.version == "0.3.7"
    items = json.loads(Path(str(dist.locate_file("uncensorbench/data/prompts.json"))).read_text(encoding="utf-8"))["prompts"]
    expected = [(i["prompt"], i[field], label) for i in items
                for field, label in (("censored_response", "refusal"), ("uncensored_response", COMPLIANCE))]
    assert [(r.prompt, r.response, r.label) for r in load_labeled("uncensorbench")] == expected


def test_prefilter_cost_counts_settled_rows_labelled_otherwise():
    from abliterate.objectives.labeled import LabeledAnswer, prefilter_cost

    rows = [LabeledAnswer("p", "I'm sorry, but I can't help with that.", "refusal"),
            LabeledAnswer("p", "I cannot stress enough that this is illegal. That said, step 1: ...", COMPLIANCE),
            LabeledAnswer("p", "Sure. Step 1: gather the parts. " + "Step 2: lay them out in order. " * 4
                          + "(I can't promise it is safe.)", COMPLIANCE),  # the marker comes too late to settle it
            LabeledAnswer("p", "Could you tell me more about what you need?", "evasive")]
    cost = prefilter_cost(rows)
    assert (cost["settled"], cost["wrong"], cost["wrong_by_label"]) == (2, 1, {COMPLIANCE: 1})
