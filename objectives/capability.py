"""What an edit costs beyond the first token's KL: questions it may get wrong, answers it may cut short.

Two measures of a model, each read beside its base model's:

* :func:`ask`: the multiple-choice questions shipped with the project
  (``objectives/data/capability.jsonl``, written here, under the project's licence; general
  knowledge, arithmetic, code and language, the right letter spread evenly over A-D). Each is
  asked as one user turn in the model's chat template with its four choices; the model's answer is
  the letter among A-D whose token its next-token distribution ranks highest. One forward pass per
  question, no generation.
* :func:`answer_lengths`: greedy answers to harmless prompts, counted in new tokens. A collapse in
  their length (short, clipped answers) is damage the first token's KL does not show.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources

import torch

from abliterate.ablation.errors import AblationError

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    text: str
    choices: tuple[str, str, str, str]
    answer: int  # index of the right choice

    @property
    def prompt(self) -> str:
        lines = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, self.choices))
        return f"{self.text}\n\n{lines}\n\nAnswer with the letter of the right choice only."


def load_questions() -> list[Question]:
    """The shipped questions, in order."""
    text = resources.files("abliterate.objectives").joinpath("data", "capability.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Question(row["question"], tuple(row["choices"]), int(row["answer"])) for row in rows]


def letter_tokens(tokenizer) -> list[int]:
    """The token each letter A-D starts with when it opens an answer; one line of error when the
    tokenizer gives two letters the same first token (the letters could not be told apart)."""
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in LETTERS]
    if len(set(ids)) != len(ids):
        raise AblationError(f"the tokenizer starts the letters {', '.join(LETTERS)} with the tokens {ids}; "
                            "the capability questions cannot tell its answers apart")
    return ids


def chosen(logprobs: torch.Tensor, letters: Sequence[int]) -> list[int]:
    """For next-token log-probs [N, V], the index of the letter each row ranks highest (the first
    of equals)."""
    return logprobs[:, list(letters)].argmax(dim=-1).tolist()


@dataclass(frozen=True)
class Answers:
    """Which questions a model got right, and what it chose."""

    chosen: list[int]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0


def ask(loaded, questions: Sequence[Question], chat, batch_size: int = 16, prefix=None) -> Answers:
    """Every question put to ``loaded`` (a :class:`ablation.loading.LoadedModel`) in ``chat``'s
    format (an :class:`objectives.refusal.ChatFormat`); ``prefix`` is each batch's context, as
    :func:`objectives.kl.response_logprobs` takes it (a prefix cache's recording or replay)."""
    from abliterate.objectives.kl import response_logprobs

    texts = chat.apply(loaded, [question.prompt for question in questions])
    logprobs = response_logprobs(loaded.model, loaded.tokenizer, texts, batch_size=batch_size, prefix=prefix)[:, 0]
    picks = chosen(logprobs, letter_tokens(loaded.tokenizer))
    return Answers(picks, [pick == question.answer for pick, question in zip(picks, questions)])


class CapabilityQuestions:
    """The shipped questions put to a model after each bake (the capability objective). Build it
    on the unedited model: it records each layer's output on the questions (ablation.prefix), so
    a trial reruns only the layers from its first edited one up, with the full pass's answers.
    A tokenizer whose answer letters cannot be told apart is refused here, before any trial."""

    def __init__(self, loaded, chat, batch_size: int = 16, prefix_cache: bool = True):
        from abliterate.ablation.prefix import PrefixCache

        self.loaded, self.chat, self.batch_size = loaded, chat, batch_size
        self.questions = load_questions()
        letter_tokens(loaded.tokenizer)
        self.prefix = PrefixCache(loaded.model) if prefix_cache else None
        self.base = ask(loaded, self.questions, chat, batch_size, self.prefix.recording if self.prefix is not None else None)

    def answers(self, first_layer: int = 0) -> Answers:
        """The model as it is now; layers below ``first_layer`` must be unedited."""
        from functools import partial

        prefix = partial(self.prefix.starting_at, first_layer) if self.prefix is not None and first_layer > 0 else None
        return ask(self.loaded, self.questions, self.chat, self.batch_size, prefix)


def answer_lengths(loaded, prompts: Sequence[str], chat, max_new_tokens: int, batch_size: int = 16) -> list[int]:
    """New tokens of ``loaded``'s greedy answer to each prompt, at most ``max_new_tokens``."""
    from abliterate.objectives.generation import generate_greedy

    texts = chat.apply(loaded, prompts)
    return generate_greedy(loaded.model, loaded.tokenizer, texts, max_new_tokens, batch_size).new_tokens


@dataclass(frozen=True)
class CapabilityCheck:
    """A model's capability figures beside its base's: accuracy on the questions and the median
    length of its harmless answers (new tokens, at most ``max_new_tokens``)."""

    accuracy: float
    base_accuracy: float
    median_length: float
    base_median_length: float
    questions: int
    prompts: int
    max_new_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def check(model, base_answers: Answers, base_lengths: Sequence[int], questions: Sequence[Question], harmless: Sequence[str],
          chat, max_new_tokens: int, batch_size: int = 16) -> CapabilityCheck:
    """``model``'s figures against the base's, measured already (the base's answers and lengths
    are computed once and kept by the caller)."""
    answers = ask(model, questions, chat, batch_size)
    lengths = answer_lengths(model, harmless, chat, max_new_tokens, batch_size)
    return CapabilityCheck(answers.accuracy, base_answers.accuracy, float(statistics.median(lengths)),
                           float(statistics.median(base_lengths)), len(questions), len(harmless), max_new_tokens)
