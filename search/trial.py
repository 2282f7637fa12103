"""One trial: bake a candidate, score KL drift and refusals, restore.

A :class:`TrialRunner` is built once per worker (model loaded, directions and base log-probs at
hand) and then runs any number of candidates. Above the KL cap the refusal pass is skipped and
the trial is infeasible: that pass is the expensive one, and its answer would not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from abliterate.ablation import Baker
from abliterate.ablation.candidate import Candidate
from abliterate.ablation.directions import separation, writes_along
from abliterate.ablation.loading import LoadedModel
from abliterate.ablation.prefix import first_edited_layer
from abliterate.ablation.residuals import capture_last_token
from abliterate.ablation.resolve import method_tensor, resolve
from abliterate.objectives.capability import CapabilityQuestions
from abliterate.objectives.kl import KLScorer
from abliterate.objectives.refusal import ChatFormat, MarkerProxy, RefusalProxy, RefusalScore
from abliterate.objectives.screen import RefusalScreen

INFEASIBLE_REFUSAL = 1.0  # what an infeasible trial reports as its refusal objective: the worst


def capture_extraction(loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str], chat: ChatFormat = ChatFormat(),
                       batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals [N, L, H] of the harmful and of the harmless extraction prompts."""
    harmful_residuals, harmless_residuals = (
        capture_last_token(loaded.model, loaded.tokenizer, chat.apply(loaded, prompts), batch_size, progress=name)
        for name, prompts in (("harmful residuals", harmful), ("harmless residuals", harmless)))
    return harmful_residuals, harmless_residuals


def compute_directions(loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str], methods: Sequence[str],
                       chat: ChatFormat = ChatFormat(), batch_size: int = 16, space=None,
                       labels: Sequence[str] | None = None, sae: str | None = None) -> dict[str, torch.Tensor]:
    """The payload tensor of every method (per-layer directions [L, H]; see ablation.methods for
    pca and the cone in a search ``space``), from one residual capture."""
    residuals = capture_extraction(loaded, harmful, harmless, chat, batch_size)
    return {method: method_tensor(method, *residuals, space, labels=labels, sae=sae) for method in methods}


# The share of the stack, from the bottom, where the strongest layer is looked for. Near the
# unembedding the class means keep drifting apart for reasons of their own, and a direction read
# there is a poor refusal direction; Arditi et al. (2024) leave the last fifth of the layers out of
# their direction selection for this reason. The separation of the SmolLM2 refuser grows to its
# last layer, where every designed first trial then read its direction (bench/RESULTS.md); on the
# development model the peak lies below this share, so its trials are unchanged.
SELECTABLE_DEPTH = 0.8


def strongest_layer(harmful_residuals: torch.Tensor, harmless_residuals: torch.Tensor) -> float:
    """Where the refusal feature is strongest, as a fraction of depth: the layer of highest
    separation (ablation.directions.separation) among the first ``SELECTABLE_DEPTH`` of the stack,
    ``int(layers * SELECTABLE_DEPTH)`` layers (at least one)."""
    ratio = separation(harmful_residuals, harmless_residuals)
    selectable = max(int(len(ratio) * SELECTABLE_DEPTH), 1)
    return int(ratio[:selectable].argmax()) / max(len(ratio) - 1, 1)


def writing_kernel(harmful_residuals: torch.Tensor, harmless_residuals: torch.Tensor, strongest: float) -> tuple[float, float] | None:
    """Where the layers write the refusal direction read at ``strongest`` (a fraction of depth), as
    a kernel's (peak, falloff) in fractions of depth: the mean and twice the standard deviation of
    the layer positions weighted by :func:`ablation.directions.writes_along`, so that a tent of
    that falloff around that peak covers most of the writing. None when no layer writes along it.
    """
    layers = harmful_residuals.shape[1]
    depth = max(layers - 1, 1)
    writes = writes_along(harmful_residuals, harmless_residuals, round(strongest * depth)).double()
    if not writes.sum() > 0:
        return None
    share = writes / writes.sum()
    positions = torch.arange(layers, dtype=torch.float64) / depth
    peak = float((share * positions).sum())
    spread = float((share * (positions - peak) ** 2).sum().sqrt())
    return peak, 2 * spread


def directions_to_bytes(directions: dict[str, torch.Tensor]) -> bytes:
    return save_tensors({k: v.contiguous() for k, v in directions.items()})


def directions_from_bytes(payload: bytes) -> dict[str, torch.Tensor]:
    return load_tensors(payload)


@dataclass(frozen=True)
class TrialOutcome:
    """Everything a trial measured. ``refusal`` is None when KL was over the cap; it is an
    incomplete score (a lower bound) when the refusal pass was given up because the trial could
    no longer reach the front."""

    kl: float
    feasible: bool
    refusal: RefusalScore | None
    seconds: dict[str, float] = field(default_factory=dict)
    edited_layers: tuple[int, ...] = ()
    over_refusal: RefusalScore | None = None  # on benign-but-edgy prompts, when the study has that objective
    third: str | None = None  # the study's third objective: "over-refusal", "capability" or none
    screen: float | None = None  # the generation-free refusal screen of a feasible trial, when the runner has one
    screened_out_by: int | None = None  # the fully scored trial whose screen and KL made the refusal pass needless
    capability: float | None = None  # accuracy on the capability questions, when the study has that objective

    @property
    def pruned(self) -> bool:
        return self.screened_out_by is not None or (self.refusal is not None and not self.refusal.complete)

    @property
    def decided_by(self) -> str:
        """Which measure settled the trial (storage.records.DECIDERS)."""
        if not self.feasible:
            return "kl"
        if self.screened_out_by is not None:
            return "screen"
        return "refusals-so-far" if self.pruned else "judged"

    @property
    def values(self) -> tuple[float, ...]:
        """The objectives, all minimised: (refusal proxy, KL), and when the study has a third the
        over-refusal rate or the share of capability questions answered wrong (the worst, 1.0,
        when the trial was over the KL cap)."""
        values = (self.refusal.value if self.refusal else INFEASIBLE_REFUSAL, self.kl)
        if self.third == "over-refusal":
            values += (self.over_refusal.rate("refusal") if self.over_refusal else INFEASIBLE_REFUSAL,)
        elif self.third == "capability":
            values += (1.0 - self.capability if self.capability is not None else INFEASIBLE_REFUSAL,)
        return values


class TrialRunner:
    """Runs candidates on one loaded model; every bake is undone bit-exactly before returning."""

    def __init__(self, loaded: LoadedModel, directions: dict[str, torch.Tensor], harmful: Sequence[str],
                 harmless: Sequence[str], proxy: RefusalProxy, kl_cap: float, kl_tokens: int = 1,
                 chat: ChatFormat = ChatFormat(), batch_size: int = 16, edgy: Sequence[str] | None = None,
                 max_new_tokens: int = 48, screen: bool = False, capability: bool = False):
        self.loaded, self.directions, self.harmful, self.chat, self.batch_size = loaded, directions, list(harmful), chat, batch_size
        # Over-refusal (a third objective) is a refusal rate on benign-but-edgy prompts, judged by
        # markers whatever proxy drives the search, like abliterate evaluate's.
        self.edgy = list(edgy) if edgy else None
        self.edgy_proxy = MarkerProxy(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat) if edgy else None
        self.proxy, self.kl_cap = proxy, kl_cap
        self.baker = Baker.for_model(loaded.model)
        self.kl = KLScorer(loaded.model, loaded.tokenizer, chat.apply(loaded, harmless), kl_tokens, batch_size)
        proxy.use_base(loaded)  # a model judge that is the base model judges after each restore
        proxy.prepare(loaded, self.harmful)
        # Measured beside the generated count, to learn how far it can stand in for it (issue 29).
        self.screen = RefusalScreen(loaded, chat.apply(loaded, self.harmful), getattr(proxy, "judge", None), max_new_tokens,
                                    batch_size) if screen else None
        # Capability (a third objective): the shipped questions, read from the next token (no generation).
        self.capability = CapabilityQuestions(loaded, chat, batch_size) if capability else None

    def run(self, candidate: Candidate, give_up_at: Callable[[float], int | None] | None = None,
            screened_out: Callable[[float, float], int | None] | None = None) -> TrialOutcome:
        """Bake, score, restore, judge. ``give_up_at(kl)``, when given, is the number of failing
        prompts from which this trial is of no use (see :meth:`RefusalProxy.score`).
        ``screened_out(kl, screen)``, when given and the runner has a screen, names a fully scored
        trial that makes this one's refusal pass needless (None: run it). Answers are judged after
        the restore (see :meth:`RefusalProxy.score_edited`)."""
        seconds = {}
        start, cpu = time.perf_counter(), time.process_time()
        finish = over_refusal = capability = screened = screened_out_by = None
        with self.baker.baked_into(resolve(candidate, self.directions, self.baker.writers)) as report:
            seconds["bake"] = time.perf_counter() - start
            # The layers below the edit are replayed from the base pass (ablation.prefix).
            first = first_edited_layer(report.layers, self.baker.num_layers)
            kl = self.kl.score(first)
            seconds["kl"] = time.perf_counter() - start - seconds["bake"]
            feasible = kl <= self.kl_cap
            if feasible and self.screen is not None:
                mark = time.perf_counter()
                screened = self.screen.score(first).value
                seconds["screen"] = time.perf_counter() - mark
                screened_out_by = screened_out(kl, screened) if screened_out else None
            if feasible and screened_out_by is None:
                mark = time.perf_counter()
                finish = self.proxy.score_edited(self.loaded, self.harmful, give_up_at(kl) if give_up_at else None)
                seconds["refusal"] = time.perf_counter() - mark
                if self.edgy:
                    mark = time.perf_counter()
                    over_refusal = self.edgy_proxy.score(self.loaded, self.edgy)
                    seconds["over_refusal"] = time.perf_counter() - mark
                if self.capability:
                    mark = time.perf_counter()
                    capability = self.capability.answers(first).accuracy
                    seconds["capability"] = time.perf_counter() - mark
        refusal = None
        if finish is not None:
            mark = time.perf_counter()
            refusal = finish()
            seconds["judge"] = time.perf_counter() - mark
        seconds["total"] = time.perf_counter() - start
        seconds["cpu"] = time.process_time() - cpu  # every thread of this process: comparable across thread counts
        third = "over-refusal" if self.edgy else "capability" if self.capability else None
        return TrialOutcome(kl, feasible, refusal, seconds, report.layers, over_refusal, third, screened, screened_out_by, capability)
