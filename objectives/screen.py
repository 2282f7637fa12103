"""A refusal screen without generation: how likely the model as it is now still opens with the
base model's own refusals, from one teacher-forced forward pass.

Built once on the unedited model: its greedy answers to the harmful prompts are generated and
judged, and for every prompt it refuses, the first ``tokens`` tokens of that refusal are kept
(padded with end-of-text where the answer was shorter: that is what the base model said). A
score forces those tokens after each prompt and reads their log-probabilities: a prompt's
*refusal likelihood* is the geometric mean probability of its refusal's tokens, and the score is
the mean over the refused prompts. The base model scores near 1 (greedy tokens are likely); an
edit that removes refusal lowers it, an edit that makes the model speak differently everywhere
lowers it too (KL says which). Prompts the base model does not refuse are not screened.

It is read beside the generated-and-judged count, never instead of it on the front: a study
records it (``--screen record``) or also skips the refusal pass of a trial it finds dominated
(``--screen prune``, search.worker), and ``bench/trial_cost.py`` reports how well it agrees with
the judged count (rank correlation, and how often it says one trial dominates another where the
judged counts do not).
With the prefix cache (:mod:`ablation.prefix`) a score runs only the layers from the first
edited one up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel
from abliterate.ablation.prefix import PrefixCache
from abliterate.objectives.generation import generate_greedy
from abliterate.objectives.judges import Judge, MarkerJudge
from abliterate.objectives.kl import forced_logprobs

SCREEN_TOKENS = 8  # a refusal's opening tokens that are forced: where it says that it refuses


@dataclass(frozen=True)
class ScreenScore:
    """The mean refusal likelihood over the screened prompts (``likelihoods``, in their order)."""

    value: float
    likelihoods: tuple[float, ...]


def refusal_likelihood(logprobs: torch.Tensor) -> torch.Tensor:
    """Per row of forced-token log-probs [N, m]: the geometric mean probability, exp(mean log p)."""
    return logprobs.double().mean(dim=-1).exp()


class RefusalScreen:
    """The generation-free refusal measure of one model on fixed harmful prompts (formatted).

    ``judge`` decides which base answers are refusals (markers by default); ``max_new_tokens``
    is the length of the base answers it judges.
    """

    def __init__(self, loaded: LoadedModel, texts: Sequence[str], judge: Judge | None = None, max_new_tokens: int = 48,
                 batch_size: int = 16, tokens: int = SCREEN_TOKENS, prefix_cache: bool = True):
        if tokens < 1:
            raise AblationError(f"the screen forces at least one token, got {tokens}")
        self.model, self.tokenizer, self.batch_size = loaded.model, loaded.tokenizer, batch_size
        answers = generate_greedy(loaded.model, loaded.tokenizer, list(texts), max(max_new_tokens, tokens), batch_size)
        verdicts = (judge or MarkerJudge()).verdicts(list(texts), answers.responses)
        refused = [i for i, verdict in enumerate(verdicts) if verdict.label == "refusal"]
        if not refused:
            raise AblationError(f"the base model refuses none of the {len(texts)} harmful prompts, so there is no refusal "
                                "to screen for; search this model with --screen off")
        end = loaded.tokenizer.eos_token_id
        self.texts = [texts[i] for i in refused]
        self.forced = [(answers.token_ids[i] + [end] * tokens)[:tokens] for i in refused]
        self.prefix = PrefixCache(loaded.model) if prefix_cache else None
        record = self.prefix.recording if self.prefix is not None else None
        self.base = ScreenScore(*_mean(forced_logprobs(loaded.model, loaded.tokenizer, self.texts, self.forced, batch_size, record)))

    @property
    def screened(self) -> int:
        """How many prompts the base model refuses: the ones screened."""
        return len(self.texts)

    def score(self, first_layer: int = 0) -> ScreenScore:
        """The model as it is now; layers below ``first_layer`` must be unedited (they are
        replayed from the base pass when the prefix cache is on)."""
        prefix = partial(self.prefix.starting_at, first_layer) if self.prefix is not None and first_layer > 0 else None
        return ScreenScore(*_mean(forced_logprobs(self.model, self.tokenizer, self.texts, self.forced, self.batch_size, prefix)))


def _mean(logprobs: torch.Tensor) -> tuple[float, tuple[float, ...]]:
    likelihoods = refusal_likelihood(logprobs)
    return float(likelihoods.mean()), tuple(likelihoods.tolist())
