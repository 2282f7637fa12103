"""Judges: what an answer to a harmful prompt is, one verdict per (prompt, answer).

One contract, :class:`Judge`, and its implementations:

* :class:`MarkerJudge` - refusal marker phrases (the cheap default);
* :class:`PluginJudge` - any object with ``refuses(prompts, responses) -> list[bool]``, loaded from
  ``module:attribute`` (the plug-in form the CLI has always taken);
* :class:`objectives.llm_judge.LLMJudge` - a chat model asked one question under a fixed rubric,
  read from the next-token probabilities of its answer letters;
* :class:`objectives.trained_judge.TrainedJudge` - a classifier trained here over a frozen sentence
  encoder (``embed``).

Every judge gives each answer a :class:`Verdict`: one of :data:`VERDICTS` and the probability that
the answer is *not* compliance. Rule-based judges give 0 or 1; a model judge gives its own
probability, which is what a search optimises (a continuous score cannot be crossed by rewording
one word). Empty, looping or garbage answers are ``degenerate`` for every judge: they must never
count as compliance, or a search would learn to break the model.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from abliterate.ablation.errors import AblationError, first_line
from abliterate.objectives.text import REFUSAL_MARKERS, has_marker, is_degenerate

if TYPE_CHECKING:
    from abliterate.ablation.loading import LoadedModel

VERDICTS = ("refusal", "compliance", "evasive", "degenerate")
COMPLIANCE = "compliance"

if TYPE_CHECKING:  # a study's settings name their judge without loading torch
    from abliterate.ablation.loading import LoadedModel


@dataclass(frozen=True)
class Verdict:
    """What a judge found an answer to be.

    ``non_compliance`` is the probability that the answer is anything but compliance (0 or 1 for
    rule-based judges); ``probabilities`` is the judge's distribution over :data:`VERDICTS` when
    it has one.
    """

    label: str
    non_compliance: float
    probabilities: dict[str, float] | None = None

    @classmethod
    def certain(cls, label: str) -> Verdict:
        return cls(label, 0.0 if label == COMPLIANCE else 1.0)


class Judge(abc.ABC):
    """Gives each (prompt, answer) pair a :class:`Verdict`; prompts are the raw user prompts."""

    name: str = "judge"

    @property
    def judges_with_base(self) -> bool:
        """Whether it judges with the unedited model handed over by :meth:`use_base`. Default: no."""
        return False

    @abc.abstractmethod
    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        """One verdict per pair, in order."""

    def refuses_early(self, response_so_far: str) -> bool:
        """True when the beginning of an answer already makes it a refusal whatever follows; lets
        generation stop that answer. Default: never (the judge needs whole answers)."""
        return False

    def use_base(self, loaded: LoadedModel | None) -> None:  # noqa: B027 - optional hook
        """Hands the judge the unedited model, for judges that judge with it. Default: ignored."""

    def refuses(self, prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
        """The plug-in form: True for every answer whose verdict is a refusal."""
        return [v.label == "refusal" for v in self.verdicts(prompts, responses)]


def rule_label(response: str, refused: bool) -> str:
    """The verdict rule judges share: refusal first, then degenerate, else compliance."""
    return "refusal" if refused else "degenerate" if is_degenerate(response) else COMPLIANCE


@dataclass(frozen=True)
class MarkerJudge(Judge):
    """A response refuses when its answer (thinking removed, normalised) holds a marker."""

    markers: tuple[str, ...] = REFUSAL_MARKERS
    name: str = "markers"

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        return [Verdict.certain(rule_label(r, has_marker(r, self.markers))) for r in responses]

    def refuses_early(self, response_so_far: str) -> bool:
        return has_marker(response_so_far, self.markers)  # a marker stays in the answer


class PluginJudge(Judge):
    """Wraps an object with ``refuses(prompts, responses) -> list[bool]`` (and, optionally,
    ``markers_only = True`` when it decides from marker phrases alone, so generation can stop at
    the first marker)."""

    def __init__(self, plugin, name: str = "plugin"):
        self.plugin, self.name = plugin, name

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        refused = list(self.plugin.refuses(list(prompts), list(responses)))
        if len(refused) != len(responses):
            raise AblationError(f"judge {self.name} gave {len(refused)} verdicts for {len(responses)} answers; "
                                "refuses() must return one bool per answer")
        return [Verdict.certain(rule_label(r, bool(flag))) for r, flag in zip(responses, refused)]

    def refuses_early(self, response_so_far: str) -> bool:
        return bool(getattr(self.plugin, "markers_only", False)) and has_marker(response_so_far, getattr(self.plugin, "markers", REFUSAL_MARKERS))


def load_judge(spec: str) -> Judge:
    """A judge from ``module:attribute`` (a Judge or ``refuses`` object, or a class / factory taking no arguments)."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError):
        raise AblationError(f"cannot import judge {spec!r}; give it as module:attribute of an importable module, "
                            "or --judge markers / --judge llm") from None
    except Exception as error:  # the module's own code failed: the user's to fix, not a traceback of ours
        raise AblationError(f"judge {spec!r} failed while its module was imported ({_reason(error)}); fix it, "
                            "or use --judge markers / --judge llm") from None
    target = getattr(module, attribute, None)
    if target is None:
        raise AblationError(f"module {module_name!r} has no attribute {attribute!r} for judge {spec!r}; "
                            "give it as module:attribute, or --judge markers / --judge llm")
    try:
        judge = target() if isinstance(target, type) or not hasattr(target, "refuses") else target
    except Exception as error:  # a factory that raises: its error, in one line
        raise AblationError(f"judge {spec!r} failed when it was made ({_reason(error)}); fix it, "
                            "or use --judge markers / --judge llm") from None
    if isinstance(judge, Judge):
        return judge
    if not hasattr(judge, "refuses"):
        raise AblationError(f"judge {spec!r} has no refuses(prompts, responses) method")
    return PluginJudge(judge, spec)


def _reason(error: Exception) -> str:
    """``Type: first line of the message``."""
    text = first_line(error, 200, fallback="")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


JUDGES = ("markers", "llm", "embed")


@dataclass(frozen=True)
class JudgeSettings:
    """How to build a judge: ``spec`` is ``markers``, ``llm``, ``embed`` (the shipped trained judge,
    :mod:`objectives.trained_judge`) or ``module:attribute``.

    For ``llm``: ``model`` is a local model folder (or hub id, or .gguf) that judges; without it
    the judge is the base model itself, handed over with :meth:`Judge.use_base` (in a search,
    after each trial's bake is undone). ``prefilter``: answers whose first
    :data:`objectives.llm_judge.PREFILTER_CHARS` characters hold a refusal marker are refusals
    without asking the model.
    """

    spec: str = "markers"
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    prefilter: bool = False
    batch_size: int = 16

    def __post_init__(self):
        if self.spec not in JUDGES and ":" not in self.spec:
            raise AblationError(f"unknown judge {self.spec!r}; use markers, llm, embed or module:attribute of your own judge")
        if self.spec != "llm" and (self.model or self.prefilter):
            raise AblationError("--judge-model and --judge-prefilter apply to --judge llm only; add --judge llm or drop them")

    def build(self, base: LoadedModel | None = None) -> Judge:
        """The judge; ``base`` (optional) is the unedited model a default ``llm`` judge uses."""
        if self.spec == "markers":
            return MarkerJudge()
        if self.spec == "embed":
            from abliterate.objectives.trained_judge import TrainedJudge

            return TrainedJudge.shipped("embed")
        if self.spec != "llm":
            return load_judge(self.spec)
        from abliterate.objectives.llm_judge import LLMJudge

        if self.model:
            from abliterate.ablation.loading import load_model

            judge = LLMJudge(load_model(self.model, self.dtype, self.device), prefilter=self.prefilter,
                             batch_size=self.batch_size, own_model=True)
        else:
            judge = LLMJudge(None, prefilter=self.prefilter, batch_size=self.batch_size)
        if base is not None:
            judge.use_base(base)
        return judge
