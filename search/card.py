"""The model card of an exported checkpoint: ``README.md`` in the Hugging Face model-card format.

A card is a YAML header (base model, ``base_model_relation``, the base's licence, tags) and a
Markdown body stating the edit, the figures measured for the trial, the promotion verdict with
its per-task table when there is one, and the project version. Everything it says comes from the
reproduction record (:mod:`search.reproduce`) and the base model's own card and config, so a
rebuilt checkpoint gets the very same card. All functions here are pure.
"""

from __future__ import annotations

import re

import yaml

from abliterate.search.analysis import specificity_line
from abliterate.storage.records import FINAL

CARD_FILE = "README.md"
TAGS = ("abliterated", "abliteration", "abliterate")
LICENSE_KEYS = ("license", "license_name", "license_link")
_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def front_matter(card: str | None) -> dict:
    """The YAML header of a model card (between its first two ``---`` lines); {} when it has none
    or it is not a YAML mapping."""
    if not card or not card.startswith("---"):
        return {}
    match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", card, re.S)
    if not match:
        return {}
    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return header if isinstance(header, dict) else {}


def hub_id(spec: str) -> str | None:
    """The hub repository a base model spec names: the spec itself when it reads ``org/name`` and
    is not a path, the repository of a Hugging Face cache snapshot folder, else None."""
    snapshot = _SNAPSHOT.search(spec.replace("\\", "/"))
    if snapshot:
        return f"{snapshot.group(1)}/{snapshot.group(2)}"
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        return None
    return spec


def card_header(base_model: str | None, base_card: dict, base_config: dict) -> dict:
    """The checkpoint card's YAML header: the base model (when it is a hub repository), the
    relation, the base's licence from its card (or its config), its pipeline tag, and our tags."""
    header: dict = {}
    if base_model:
        header |= {"base_model": base_model, "base_model_relation": "finetune"}
    if base_card.get("license"):
        header |= {key: base_card[key] for key in LICENSE_KEYS if base_card.get(key)}
    elif base_config.get("license"):
        header["license"] = base_config["license"]
    header["library_name"] = "transformers"
    if base_card.get("pipeline_tag"):
        header["pipeline_tag"] = base_card["pipeline_tag"]
    header["tags"] = list(TAGS)
    return header


def model_card(header: dict, record: dict) -> str:
    """The whole ``README.md``: ``header`` as YAML, then the body described by ``record``."""
    text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return f"---\n{text}---\n\n{card_body(record)}"


def card_body(record: dict) -> str:
    study, base, edit = record["study"], record["base"], record["edit"]
    lines = [
        f"# {base['model'].rstrip('/').split('/')[-1]}, abliterated (study {study['name']}, trial {study['trial']})",
        "",
        f"`{base['model']}` with its refusal direction removed from the weights by abliterate "
        f"{record.get('abliterate') or '(unknown version)'}: trial {study['trial']} of the study `{study['name']}`. "
        "The `reproduce.json` beside this card rebuilds these weights bit for bit from the base model, "
        "without the study's database:",
        "",
        "```bash",
        "abliterate export --from-file reproduce.json --model BASE_MODEL --out DIR",
        "```",
        "",
        *adapter_text(record.get("adapter"), base["model"]),
        "## The edit",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base['model']}` ({base['dtype']}, edited on {base['device']}) |",
        f"| study | `{study['name']}` |",
        f"| trial | {study['trial']} |",
        f"| direction method | {direction_text(edit)} |",
        f"| intervention | {intervention_text(edit)} |",
        f"| profile | {profile_text(edit)} |",
        f"| layers touched | {layers_text(edit['layers_touched'], edit['num_layers'])} |",
        "",
        "## Measured at export",
        "",
        *figures_table(record.get("figures") or {}, study["config"]),
        "",
        "## Promotion",
        "",
        *promotion_text(record.get("promotion")),
        "",
        "## Versions",
        "",
        versions_text(record.get("packages") or {}, study.get("seed")),
    ]
    return "\n".join(lines) + "\n"


def capability_line(capability: dict) -> str:
    """A candidate's capability check in words (the card's and the dashboard note's)."""
    c = capability
    return (f"{c['accuracy']:.0%} of {c['questions']} multiple-choice questions right (base model {c['base_accuracy']:.0%}); "
            f"greedy answers to {c['prompts']} harmless prompts {c['median_length']:.0f} tokens long at the median (base model "
            f"{c['base_median_length']:.0f}, at most {c['max_new_tokens']})")


def adapter_text(adapter: dict | None, model: str) -> list[str]:
    """The card's section on an adapter export (none for a whole checkpoint)."""
    if not adapter:
        return []
    exact = adapter["max_error"] < 1e-4
    return [
        "## As a LoRA adapter",
        "",
        f"This folder is a PEFT LoRA adapter of `{model}` (rank {adapter['rank']}, {adapter['writers']} weight matrices), "
        "not a whole model: the edit is the adapter's product B A added to each matrix. "
        + ("It is the edit itself, up to float32 rounding." if exact else
           f"The edit is norm-preserving and not of low rank: the adapter is its best rank-{adapter['rank']} fit, leaving out "
           f"up to {adapter['max_error']:.1%} of the change of a matrix (relative Frobenius norm)."),
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, ADAPTER_DIR)",
        "```",
        "",
    ]


def direction_text(edit: dict) -> str:
    """The direction method's words for an edit summary (its registered implementation's)."""
    from abliterate.ablation.registry import methods

    if edit["method"] in methods:
        return methods.get(edit["method"]).describe(edit)
    return edit["method"]


def intervention_text(edit: dict) -> str:
    """The intervention's words for an edit summary (its registered implementation's)."""
    from abliterate.ablation.registry import interventions

    name = edit["intervention"]
    text = interventions.get(name).describe(edit) if name in interventions else name
    return f"{text}, norm-preserving" if edit["norm_preserving"] else text


def profile_text(edit: dict) -> str:
    kernels = "; ".join(f"{group}: {k['shape']} kernel, weight {k['peak_weight']:.3f} at layer {k['peak']:.2f} falling to "
                        f"{k['floor_weight']:.3f} over {k['falloff']:.2f} layers" for group, k in edit["kernels"].items())
    calibrated = (f"; each layer's weight scaled by its refusal strength over the {edit['calibration_percentile']}th "
                  "percentile of the layers' (clamped to 0.5-2)" if edit.get("calibration_percentile") else "")
    return f"{kernels}; within layers {edit['first_layer']}-{edit['last_layer']}{calibrated}"


def layers_text(layers: list[int], num_layers: int) -> str:
    """Layers as ranges, e.g. ``2-5, 7 (5 of 24)``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"
    return f"{text} ({len(layers)} of {num_layers})"


def figures_table(figures: dict, config: dict) -> list[str]:
    if not figures:
        return ["No figures were recorded for this trial."]
    rows = [("KL drift from the base model (harmless evaluation prompts, first answer token)", _number(figures.get("kl"), 4)),
            (f"refusal objective ({config.get('proxy', 'markers')} proxy, harmful evaluation prompts)", _number(figures.get("refusal"), 3)),
            ("refusal rate", _number(figures.get("refusal_rate"), 2)),
            ("degenerate answers", _number(figures.get("degenerate_rate"), 2)),
            ("within the KL cap", f"{'yes' if figures.get('feasible') else 'no'} (cap {config.get('kl_cap')})")]
    return ["| measure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def promotion_text(promotion: dict | None) -> list[str]:
    if not promotion:
        return ["Not promoted: no confirmation or agent sweep has judged this trial."]
    details = promotion.get("details") or {}
    if promotion["status"] in FINAL:
        lines = [f"Verdict: **{promotion['status']}**"]
    else:
        lines = [f"Promotion in progress ({promotion['status']}): no verdict yet."]
    confirmation = details.get("confirmation")
    if confirmation:
        lines += ["", f"Held-out confirmation: refusal {confirmation['refusal']:.3f} against the base model's "
                      f"{confirmation['base_refusal']:.3f} (margin {confirmation['margin']}), KL {confirmation['kl']:.4f}: "
                      f"{'passed' if confirmation['passed'] else 'dropped'}."]
        specificity = specificity_line(confirmation)
        if specificity:
            lines += ["", specificity[0].upper() + specificity[1:] + "."]
        if confirmation.get("capability"):
            lines += ["", f"Capability check: {capability_line(confirmation['capability'])}."]
    gate = details.get("gate")
    if gate:
        lines += ["", f"Agent sweep ({details.get('runner', 'runner')}, {details.get('attempts', '?')} attempts per task): {gate['reason']}",
                  "", "| task | candidate | baseline | p | p (Holm) | p (BH) |", "|---|---|---|---|---|---|"]
        for task in gate["tasks"]:
            c = task["counts"]
            lines.append(f"| {c['task']} | {c['candidate_pass']}/{c['candidate_n']} | {c['baseline_pass']}/{c['baseline_n']} | "
                         f"{task['p']:.3g} | {task['p_holm']:.3g} | {task['p_bh']:.3g} |")
        ratio = "n/a" if gate.get("pooled_odds_ratio") is None else f"{gate['pooled_odds_ratio']:.3g}"
        lines += ["", f"Pooled CMH p {gate['pooled_p']:.3g}, odds ratio {ratio}."] + [f"- {flag}" for flag in gate.get("flags", [])]
    return lines


def versions_text(packages: dict, seed) -> str:
    listed = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    return f"{listed}; sampler seed {seed if seed is not None else 'random'}."


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
