"""The feasible Pareto front of a study (both objectives minimised)."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from abliterate.storage.records import TrialRecord


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (<= everywhere, < somewhere), in order."""
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished feasible trials on the Pareto front, by refusal then KL."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if TrialRecord.of(t).feasible]
    front = [trials[i] for i in pareto_front([tuple(t.values) for t in trials])]
    return sorted(front, key=lambda t: tuple(t.values))


def dominating_point(points: Sequence[tuple[float, float]], kl: float) -> int | None:
    """Of the (refusal, KL) ``points``, the one with the least refusal among those with KL at most
    ``kl``: a trial with this KL whose refusal reaches that point's cannot improve the front."""
    under = [i for i, (_, point_kl) in enumerate(points) if point_kl <= kl]
    return min(under, key=lambda i: points[i]) if under else None


def screen_dominates(kl: float, screen: float, other_kl: float, other_screen: float, margin: float) -> bool:
    """Whether a fully scored trial at (``kl``, ``screen``) rules out another at (``other_kl``,
    ``other_screen``) by the refusal screen's reading: no more KL, and a screen lower by at least the
    share ``margin`` of its own (``other_screen >= screen * (1 + margin)``). Relative, because a
    screen's scale is the model's: a tiny refuser's screens are a hundredth of a 0.5B model's.
    Screens closer than the margin may differ either way in judged refusals (bench/cost: the
    margin's record)."""
    return kl <= other_kl and other_screen >= screen * (1 + margin)
