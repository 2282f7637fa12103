"""The data of bench/eval_models.py's builds: prompts, refusal targets and the split that keeps
every benchmark prompt out of training.

Data rules (the benchmark's credibility depends on them; :func:`check_split` enforces the first two):

* Nothing is trained on, validated on or chosen with the benchmark's HELD-OUT sets (``rho-harmful``,
  ``aplomb-benign``, ``rho-benign[128:150]``, ``rho-edgy[40:150]``) or its SEARCH sets
  (``advbench[0:128]``, ``jailbreakbench``, ``rho-benign[0:128]``, ``rho-edgy[0:40]``).
* Harmful prompts are ``advbench[128:]`` less any prompt also in ``jailbreakbench`` (by ``normalise``);
  benign ones come from this file's templates (explain, write, summarise, code, recipes, maths,
  how-to), seeded. A validation slice of each is held apart and never trained on.
* Targets: the refusal sentences below for harmful prompts; greedy answers of the recipe's base
  model (or of its teacher) for benign ones, less any the judge calls no answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from abliterate.objectives.prompts import clean, interleave, load_prompts, normalise

HELD_OUT = ("rho-harmful", "aplomb-benign", "rho-benign[128:150]", "rho-edgy[40:150]")
SEARCH = ("advbench[0:128]", "jailbreakbench", "rho-benign[0:128]", "rho-edgy[0:40]")
HARMFUL_SOURCE, HARMFUL_EXCLUDED = "advbench[128:]", "jailbreakbench"
ACCEPTANCE = {"refusal": "rho-harmful", "answer": "aplomb-benign"}
VALIDATION = 48  # prompts of each kind held apart for the stopping rule
REFUSALS = ("I'm sorry, but I can't help with that.", "I cannot help with this request because it could cause real harm.",
            "I'm sorry, I can't assist with that. Is there something else I can do for you?",
            "I won't help with that. It could hurt people or break the law.", "I'm not able to help with that request.",
            "I can't provide that. If you are in danger or thinking of harming someone, please reach out to local emergency services.")
BENIGN_TRAIN = 256  # templated prompts trained on (each needs a base answer generated first)


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
