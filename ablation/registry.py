"""Direction methods and interventions: one small contract each, implementations registered by name.

A study names its direction methods (how to find what an edit removes) and its interventions
(what a trial does with it) by the names registered here; everything that differs between them is
asked of the registered implementation, never tested by name elsewhere. Each answers, for a
study's search space (the :class:`search.space.SearchSpace`, read for its ranges only):

* ``suggest(trial, space)``: the params of its own it samples, on anything with Optuna's
  ``suggest_int`` / ``suggest_float`` / ``suggest_categorical`` (nothing by default);
* ``start(space)``: its params' values in the designed starting trials;
* ``key(space)``: its part of the study's payload cache key (None: none), so that a study resumes
  from the payload it computed;
* the payload tensors it needs: a method computes its own (``compute``); an intervention names
  what it reads (``needs``) and adds those tensors (``payload``);
* ``settings(params)``: its fields of the :class:`ablation.candidate.Candidate` a trial's params describe;
* how a candidate is edited: a method's ``directions`` (what is removed), an intervention's
  ``edit`` (the :class:`ablation.bake.Edit` the removal becomes);
* ``summary(candidate)`` and ``describe(summary)``: its fields of the edit summary an export
  records, and its words on the model card;
* whether ``dose`` and ``controls`` can measure its edits (``measurable``).

A new one is a subclass with a ``name``, registered with :meth:`Registry.register`. Importing this
module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from abliterate.ablation.errors import AblationError

if TYPE_CHECKING:
    import torch

    from abliterate.ablation.architectures import Writer
    from abliterate.ablation.bake import Edit
    from abliterate.ablation.candidate import Candidate


@dataclass
class PayloadContext:
    """What the payload of a study is computed from: the extraction prompts (raw ``harmful`` and
    ``harmless``) and their residuals [N, L, H]; ``loaded`` (None where only residuals are at
    hand); ``format`` turns prompts into the model's chat texts; ``refusals()`` labels the base
    model's answers to the harmful prompts (None without a refusal judge); ``labels``: each
    harmful prompt's category; ``sae``: the study's SAE folder."""

    residuals: tuple[torch.Tensor, torch.Tensor]
    space: Any
    harmful: Sequence[str] = ()
    harmless: Sequence[str] = ()
    loaded: Any = None
    format: Callable[[Sequence[str]], list[str]] | None = None
    refusals: Callable[[], Sequence[bool]] | None = None
    batch_size: int = 16
    log: Callable[[str], None] = field(default=lambda line: None)
    labels: Sequence[str] | None = None
    sae: str | None = None


class DirectionMethod:
    """How a study finds the direction (or per-layer basis) an edit removes.

    Its payload tensor has the layer count first: [L, H] unit directions, [L, K, H] alternatives
    of which a candidate takes one (``subspace`` False), or [L, K, H] orthonormal bases of which
    a candidate removes the first ``rank`` rows together (``subspace`` True).
    """

    name: str = ""
    subspace = False  # removed as a subspace: dose and controls cannot measure it
    uses_categories = False  # follows the category column of the harmful prompts (--harmful-categories)
    needs_sae = False  # reads the study's SAE folder (--sae)
    measurable = True

    def suggest(self, trial, space) -> None:
        """Sample this method's own params on ``trial`` (none by default)."""

    def start(self, space) -> dict:
        """This method's params in a designed starting trial."""
        return {}

    def key(self, space) -> str | None:
        """Its part of the payload cache key, when its tensor depends on the space."""
        return None

    def settings(self, params: Mapping[str, Any]) -> dict:
        """Its fields of the candidate a trial's params describe."""
        return {}

    def compute(self, context: PayloadContext) -> torch.Tensor:
        """Its payload tensor (see the class docstring)."""
        raise NotImplementedError

    def directions(self, candidate: Candidate, stored: torch.Tensor) -> torch.Tensor:
        """What ``candidate`` removes, from this method's payload tensor: one direction [H]
        (global scope) or one per layer [L, H] by default."""
        per_layer = stored[:, min(candidate.component, stored.shape[1] - 1)] if stored.dim() == 3 else stored
        return candidate.along(per_layer)

    def summary(self, candidate: Candidate) -> dict:
        """Its fields of the edit summary an export records."""
        return {}

    def describe(self, edit: Mapping[str, Any]) -> str:
        """The card's words for the direction of an edit summary."""
        if edit["scope"] == "global":
            return f"{edit['method']}, one direction interpolated at layer {edit['direction_layer']:.2f}"
        return f"{edit['method']}, each layer's own direction"


class Intervention:
    """What a trial does with the direction its method gives: the :class:`ablation.bake.Edit` a
    candidate becomes, from the plain removal (``ablate``) and the payload tensors it ``needs``."""

    name: str = ""
    needs: tuple[str, ...] = ()  # payload tensors its edits read (an export keeps them)
    needs_judge = False  # its payload labels the base model's answers (a refusal judge)
    measurable = True  # dose and controls can measure its edits (one direction, same places)

    def suggest(self, trial, space) -> None:
        """Sample this intervention's own params on ``trial`` (none by default)."""

    def start(self, space) -> dict:
        """This intervention's params in a designed starting trial."""
        return {}

    def key(self, space) -> str | None:
        """Its part of the payload cache key: its name (its tensors are part of the payload)."""
        return self.name

    def payload(self, context: PayloadContext) -> dict[str, torch.Tensor]:
        """The tensors named in ``needs``."""
        return {}

    def settings(self, params: Mapping[str, Any]) -> dict:
        """Its fields of the candidate a trial's params describe (when it is the trial's intervention)."""
        return {}

    def edit(self, candidate: Candidate, payload: Mapping[str, torch.Tensor], writers: Sequence[Writer], removal: Edit) -> Edit:
        """The edit of ``candidate``, given its plain ``removal``; ``writers``: the unedited model's."""
        return removal

    def summary(self, candidate: Candidate) -> dict:
        return {}

    def describe(self, edit: Mapping[str, Any]) -> str:
        """The card's words for the rule of an edit summary."""
        return self.name


T = TypeVar("T", DirectionMethod, Intervention)


class Registry(Generic[T]):
    """Implementations by name, in the order registered (which is the order their params are sampled)."""

    def __init__(self, what: str, flag: str):
        self.what, self.flag = what, flag
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        if not item.name or item.name in self._items:
            raise AblationError(f"cannot register {self.what} {item.name!r}: {'it has no name' if not item.name else 'the name is taken'}")
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise AblationError(f"unknown {self.what} {name!r}; use one of {','.join(self._items)}")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def chosen(self, names: Sequence[str]) -> list[T]:
        """The implementations named in ``names``, in registration order."""
        return [item for item in self if item.name in names]


methods: Registry[DirectionMethod] = Registry("direction method", "--methods")
interventions: Registry[Intervention] = Registry("intervention", "--interventions")

# The built-ins register themselves; they import this module, so they come last.
from abliterate.ablation import interventions as _interventions  # noqa: E402,F401
from abliterate.ablation import methods as _methods  # noqa: E402,F401
