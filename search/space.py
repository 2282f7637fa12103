"""The search space: what one trial picks.

Positions are sampled as fractions of the layer stack so a study's space means the same thing
on a 24-layer and a 64-layer model; :func:`candidate_from_params` (in the engine,
:mod:`ablation.candidate`) turns a trial's params into layer indices. It is pure, so a stored
trial can be re-baked exactly (export, promotion). Direction methods and interventions are the
engine's registered implementations (:mod:`ablation.registry`): each samples its own params and
gives its own starting values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from abliterate.ablation.candidate import GROUPS, IMPLIED, Candidate, candidate_from_params
from abliterate.ablation.errors import AblationError
from abliterate.ablation.profile import SHAPES
from abliterate.ablation.registry import interventions, methods

__all__ = ["GROUPS", "IMPLIED", "Candidate", "candidate_from_params", "SearchSpace", "PRESETS", "suggest", "distributions",
           "starting_points", "classic_seed"]

SCOPES = ("global", "per-layer")
# The built-in direction methods (ablation.methods): the four single-direction estimators of
# ablation.directions, the cone of category directions, and the decoder rows of the study's own
# sparse autoencoders' most harmful features (sae). A space may name any registered one.
METHODS = methods.names()
# The built-in interventions (ablation.interventions): remove the direction (ablate); remove it
# and amplify the compliance direction (amplify); remove it only from the attention heads that
# carry refusal (heads). A space may name any registered one.
INTERVENTIONS = interventions.names()


@dataclass(frozen=True)
class SearchSpace:
    """Ranges for every sampled parameter; positions are fractions of the layer count minus one.

    A tuple of one choice, or a range whose two ends are equal, fixes that parameter. The default
    is the small space that finds the best front per trial (bench/RESULTS.md): one direction
    method (mean difference projected against the harmless mean), norm-preserving edits, a tent
    kernel per component over every layer, removed from every writer (``ablate``) or only from
    the attention heads that carry refusal (``heads``), twelve free parameters. :data:`PRESETS`
    names it, each of its two interventions alone, and a wider space.

    The other research options are opt-in: their parameters are sampled only by a space that
    uses them. ``pca_component`` (0-based) with method ``pca``; ``cone_rank`` (directions
    removed together) with ``cone``; ``amplify_strength`` with intervention ``amplify``;
    ``heads`` (how many) with ``heads``; ``read_peak``, ``read_peak_weight`` and ``read_falloff``
    (the kernel of the readers' edit) with ``read``; ``calibration`` (the target percentile of a calibrated
    profile, see :func:`ablation.resolve.calibrated_profile`) when the space lists any.
    """

    methods: tuple[str, ...] = ("mean-projected",)
    scopes: tuple[str, ...] = SCOPES
    direction_index: tuple[float, float] = (0.4, 1.0)
    first_layer: tuple[float, float] = (0.0, 0.0)
    last_layer: tuple[float, float] = (1.0, 1.0)
    shapes: tuple[str, ...] = ("tent",)
    peak: tuple[float, float] = (0.4, 1.0)
    peak_weight: tuple[float, float] = (0.8, 1.5)
    floor_fraction: tuple[float, float] = (0.0, 1.0)
    falloff: tuple[float, float] = (0.05, 0.6)
    norm_preserving: tuple[bool, ...] = (True,)
    interventions: tuple[str, ...] = ("ablate", "heads")
    pca_component: tuple[int, int] = (0, 2)
    cone_rank: tuple[int, int] = (1, 4)
    amplify_strength: tuple[float, float] = (0.0, 0.5)
    heads: tuple[int, int] = (1, 32)
    read_peak: tuple[float, float] = (0.4, 1.0)
    read_peak_weight: tuple[float, float] = (0.0, 1.0)
    read_falloff: tuple[float, float] = (0.05, 0.6)
    sae_features: tuple[int, int] = (1, 8)
    calibration: tuple[int, ...] = ()  # target percentiles of calibrated profiles (0: uncalibrated); empty: off

    def __post_init__(self):
        for name, chosen, known in (("direction method", self.methods, methods.names()),
                                    ("intervention", self.interventions, interventions.names())):
            unknown = [value for value in chosen if value not in known]
            flag = "--methods" if name == "direction method" else "--interventions"
            if unknown or not chosen:
                what = f"unknown {name} {unknown[0]!r}" if unknown else f"no {name} given"
                raise AblationError(f"{what} in {flag}; use one or more of {','.join(known)}")
        for name in ("pca_component", "cone_rank", "heads", "sae_features"):
            low, high = getattr(self, name)
            if not 0 <= low <= high or (name != "pca_component" and low < 1):
                raise AblationError(f"{name} range {low}..{high} is not a range of {'0-based indices' if name == 'pca_component' else 'counts from 1'}")

        for name in ("direction_index", "first_layer", "last_layer", "peak", "floor_fraction", "read_peak"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 1:
                raise AblationError(f"{name} range {low}..{high} must lie within 0..1: it is a fraction (of the depth, or of the peak weight)")
        for name in ("peak_weight", "read_peak_weight", "amplify_strength"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise AblationError(f"{name} range {low}..{high} must be weights from 0 up: a negative weight would add the direction "
                                    "(the amplify intervention does that on purpose)")
        for name in ("falloff", "read_falloff"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise AblationError(f"{name} range {low}..{high} must lie within 0..1 and above 0: it is a fraction of the depth")
        if any(not 0 <= p < 100 for p in self.calibration):
            raise AblationError(f"calibration percentiles must be 0 (off) or in 1..99, got {list(self.calibration)}")

    @property
    def intervention_params(self) -> bool:
        """Whether trials sample an intervention (any space but plain ablation)."""
        return tuple(self.interventions) != (IMPLIED["intervention"],)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SearchSpace:
        return cls(**{k: tuple(v) for k, v in values.items()})


PRESETS = {
    # The designed first trials take the strong doses as whole ablations and the others in the
    # heads (see starting_points); the sampler then picks either per trial. Beside Heretic 1.4.0
    # it found the better front at 10 and 30 trials on every seed measured, where either
    # intervention alone fell short on one count (bench/RESULTS.md, "The default: ablate or heads").
    "default": SearchSpace(),
    # The default before heads joined it: the direction removed from every writer.
    "ablate": SearchSpace(interventions=("ablate",)),
    # Attention edited only in the heads that carry refusal: about 0.7x the KL of ablate at each
    # dose, but not ablate's lowest refusal count.
    "heads": SearchSpace(interventions=("heads",)),
    # Every option the engine has: both mean-difference methods, truncated layer ranges, both
    # kernel shapes, norm-preserving on or off, both interventions (seventeen free parameters).
    "wide": SearchSpace(methods=("mean", "mean-projected"), direction_index=(0.4, 0.9), first_layer=(0.0, 0.4),
                        last_layer=(0.7, 1.0), shapes=SHAPES, peak=(0.5, 0.9), falloff=(0.1, 0.6), norm_preserving=(False, True)),
}


def suggest(trial, space: SearchSpace) -> dict:
    """Sample one point of ``space`` on an Optuna trial; returns ``trial.params``.

    Every parameter is sampled on every trial, ``direction_index`` too although the per-layer
    scope ignores it: multivariate TPE models jointly only the parameters all trials share.
    """
    trial.suggest_categorical("method", list(space.methods))
    trial.suggest_categorical("scope", list(space.scopes))
    trial.suggest_float("direction_index", *space.direction_index)
    trial.suggest_float("first_layer", *space.first_layer)
    trial.suggest_float("last_layer", *space.last_layer)
    for group in GROUPS:
        trial.suggest_categorical(f"{group}_shape", list(space.shapes))
        trial.suggest_float(f"{group}_peak", *space.peak)
        trial.suggest_float(f"{group}_peak_weight", *space.peak_weight)
        trial.suggest_float(f"{group}_floor_fraction", *space.floor_fraction)
        trial.suggest_float(f"{group}_falloff", *space.falloff)
    trial.suggest_categorical("norm_preserving", list(space.norm_preserving))
    # The research options, only in spaces that choose them (the default space's params stay as
    # they were); each is sampled on every trial of such a space, for multivariate TPE.
    for method in methods.chosen(space.methods):
        method.suggest(trial, space)
    if space.intervention_params:
        trial.suggest_categorical("intervention", list(space.interventions))
    for intervention in interventions.chosen(space.interventions):
        intervention.suggest(trial, space)
    if space.calibration:
        trial.suggest_categorical("calibration", list(space.calibration))
    return dict(trial.params)


class _Recorder:
    """Stands in for an Optuna trial in :func:`suggest` to read a space's distributions."""

    def __init__(self):
        self.distributions, self.params = {}, {}

    def _record(self, name: str, distribution, value):
        self.distributions[name], self.params[name] = distribution, value
        return value

    def suggest_categorical(self, name, choices):
        from optuna.distributions import CategoricalDistribution

        return self._record(name, CategoricalDistribution(choices), choices[0])

    def suggest_float(self, name, low, high):
        from optuna.distributions import FloatDistribution

        return self._record(name, FloatDistribution(low, high), low)

    def suggest_int(self, name, low, high):
        from optuna.distributions import IntDistribution

        return self._record(name, IntDistribution(low, high), low)


def distributions(space: SearchSpace) -> dict:
    """The Optuna distribution of every param a trial of ``space`` samples, by name: what
    :func:`suggest` asks of a trial, read without a study."""
    recorder = _Recorder()
    suggest(recorder, space)
    return recorder.distributions


# The starting points' kernels, (peak, peak weight, floor fraction, falloff). Removing a direction
# from every layer at weight one (the classic edit) removes refusals but costs the most KL; the
# fronts measured so far are made of edits focused on the middle of the stack, with directions read
# after the separation peak, and per-layer directions cost several times the KL (bench/RESULTS.md).
_STRONG, _WEAKER, _MILD, _MEDIUM = (0.6, 1.3, 0.4, 0.4), (0.6, 1.0, 0.2, 0.3), (0.6, 0.8, 0.1, 0.25), (0.6, 1.15, 0.3, 0.35)
_EVERYWHERE = (0.6, 1.0, 1.0, 0.6)
# (scope, shift of the direction from the strongest layer, kernel, intervention) in the order they
# are used. A space with both ablate and heads takes the strong dose from a fifth deeper as a whole
# ablation (the fewest refusals measured) and the other doses in the heads that carry refusal
# (about 0.7x the KL at each dose); a space with one of them uses it for every dose.
_STARTS = (("global", 0.1, _STRONG, "heads"), ("global", 0.1, _WEAKER, "heads"), ("global", 0.2, _STRONG, "ablate"),
           ("global", 0.1, _MILD, "heads"), ("global", 0.1, _MEDIUM, "heads"), ("global", 0.0, _STRONG, "ablate"))


MAX_STARTING_POINTS = len(_STARTS)


def starting_points(space: SearchSpace, strongest: float, count: int,
                    writing: tuple[float, float] | None = None) -> list[dict]:
    """The first ``count`` trials (at most six): designed, not random.

    A search of a few dozen trials is mostly spent finding where to take the direction and how
    hard to remove it. These points take the direction a tenth of the depth after the layer where
    the refusal feature separates best (``strongest``, a fraction of depth: the worker passes
    :func:`search.trial.strongest_layer`, the peak of :func:`ablation.directions.separation` below
    the last fifth of the stack) and remove it from the middle of the stack (a tent at
    60 % depth) at a ladder of doses: strong, weaker, from a fifth deeper, mild, medium, and last
    strong at the separation peak itself. The doses lay out a front from few refusals to little
    KL before the sampler starts, so that even a short search has one to refine. A space with
    both interventions ablate and heads takes the strong dose from a fifth deeper (and the one at
    the peak) as a whole ablation and every other dose in the heads only.
    Every value is held inside ``space``; fixed choices of ``space`` are kept as they are.

    ``writing``, when given, is where this model's layers write the refusal direction, measured
    (``(peak, falloff)`` from :func:`search.trial.writing_kernel`): every kernel is centred on that
    peak instead of 60 % depth, and its falloff is the measured one scaled as the ladder's are
    against the strong dose's, so that the constants found on the development model keep only the
    doses (peak weights and floors).
    """
    return [_point(space, scope, strongest + shift, _placed(kernel, writing), intervention=intervention)
            for scope, shift, kernel, intervention in _STARTS[:count]]


def _placed(kernel: tuple[float, float, float, float], writing: tuple[float, float] | None) -> tuple[float, float, float, float]:
    if writing is None:
        return kernel
    peak, weight, floor, falloff = kernel
    return writing[0], weight, floor, writing[1] * falloff / _STRONG[3]


def classic_seed(space: SearchSpace) -> dict:
    """The classic edit: mean difference from ~60% depth, weight 1 everywhere."""
    return _point(space, "global", 0.6, _EVERYWHERE, method="mean", norm_preserving=False)


def _point(space: SearchSpace, scope: str, direction_index: float, kernel: tuple[float, float, float, float],
           method: str | None = None, norm_preserving: bool | None = None, intervention: str = "ablate") -> dict:
    def pick(choices, wanted):
        return wanted if wanted in choices else choices[0]

    def clip(bounds, value):
        return min(max(value, bounds[0]), bounds[1])

    peak, weight, floor, falloff = kernel
    point = {"method": pick(space.methods, method or space.methods[0]), "scope": pick(space.scopes, scope),
             "direction_index": clip(space.direction_index, direction_index),
             "first_layer": space.first_layer[0], "last_layer": space.last_layer[1],
             "norm_preserving": pick(space.norm_preserving, True if norm_preserving is None else norm_preserving)}
    for chosen in methods.chosen(space.methods):
        point |= chosen.start(space)
    if space.intervention_params:
        point["intervention"] = pick(space.interventions, intervention if intervention in space.interventions else IMPLIED["intervention"])
    for chosen in interventions.chosen(space.interventions):
        point |= chosen.start(space)
    if space.calibration:
        point["calibration"] = pick(space.calibration, 0)
    for group in GROUPS:
        point |= {f"{group}_shape": pick(space.shapes, "tent"), f"{group}_peak": clip(space.peak, peak),
                  f"{group}_peak_weight": clip(space.peak_weight, weight),
                  f"{group}_floor_fraction": clip(space.floor_fraction, floor), f"{group}_falloff": clip(space.falloff, falloff)}
    return point
