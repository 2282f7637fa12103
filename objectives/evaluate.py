"""Score an edited model against its base: KL drift, refusals, degenerate answers, over-refusal,
and the capability check (questions and the length of harmless answers)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel
from abliterate.objectives.capability import CapabilityCheck
from abliterate.objectives.kl import kl_divergence, response_logprobs
from abliterate.objectives.refusal import ChatFormat, MarkerProxy, RefusalProxy, RefusalScore


@dataclass(frozen=True)
class Evaluation:
    """The figures ``abliterate evaluate`` prints."""

    kl: float
    refusal: RefusalScore
    base_refusal: RefusalScore
    over_refusal: RefusalScore | None = None
    capability: CapabilityCheck | None = None

    def as_dict(self) -> dict:
        def scored(score: RefusalScore | None):
            if score is None:
                return None
            return {"value": score.value, "refusal_rate": score.rate("refusal"), "degenerate_rate": score.rate("degenerate"),
                    **asdict(score)}

        return {"kl": self.kl, "refusal": scored(self.refusal), "base_refusal": scored(self.base_refusal),
                "over_refusal": scored(self.over_refusal),
                "capability": self.capability.as_dict() if self.capability else None}


def evaluate(
    load_base: Callable[[], LoadedModel],
    load_edited: Callable[[], LoadedModel],
    harmful: Sequence[str],
    harmless: Sequence[str],
    proxy: RefusalProxy,
    chat: ChatFormat = ChatFormat(),
    edgy: Sequence[str] | None = None,
    batch_size: int = 16,
    capability_tokens: int = 0,
) -> Evaluation:
    """Base figures first, then the edited model's; only one model is in memory at a time. With
    ``capability_tokens``, the capability check too (:mod:`objectives.capability`): the shipped
    questions, and greedy answers of at most that many tokens to the harmless prompts.

    A judge that is the base model itself judges the edited model's answers after the edited
    model is released and the base loaded again: the edited model never judges itself.
    """
    base = load_base()
    base_logprobs = response_logprobs(base.model, base.tokenizer, chat.apply(base, harmless), batch_size=batch_size)
    proxy.use_base(base)
    proxy.prepare(base, harmful)
    base_refusal = proxy.score(base, harmful)
    proxy.use_base(None)
    if capability_tokens:
        from abliterate.objectives.capability import answer_lengths, ask, check, load_questions

        questions = load_questions()
        base_answers = ask(base, questions, chat, batch_size)
        base_lengths = answer_lengths(base, harmless, chat, capability_tokens, batch_size)
    vocabulary = len(base.tokenizer)
    del base
    gc.collect()

    edited = load_edited()
    if len(edited.tokenizer) != vocabulary:
        raise AblationError(f"edited model has a vocabulary of {len(edited.tokenizer)}, the base {vocabulary}; compare a model with its own base")
    edited_logprobs = response_logprobs(edited.model, edited.tokenizer, chat.apply(edited, harmless), batch_size=batch_size)
    kl = float(kl_divergence(base_logprobs, edited_logprobs).mean())
    finish = proxy.score_edited(edited, harmful)
    # Over-refusal is a refusal rate on benign prompts, whatever proxy drives the search.
    over_refusal = MarkerProxy(chat=chat, batch_size=batch_size).score(edited, edgy) if edgy else None
    capability = (check(edited, base_answers, base_lengths, questions, harmless, chat, capability_tokens, batch_size)
                  if capability_tokens else None)
    if proxy.judges_with_base:
        del edited
        gc.collect()
        proxy.use_base(load_base())
    refusal = finish()
    proxy.use_base(None)
    return Evaluation(kl, refusal, base_refusal, over_refusal, capability)
