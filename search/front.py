"""The feasible Pareto front of a study (both objectives minimised)."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import TrialState


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (<= everywhere, < somewhere), in order."""
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished feasible trials on the Pareto front, by refusal then KL."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible")]
    front = [trials[i] for i in pareto_front([tuple(t.values) for t in trials])]
    return sorted(front, key=lambda t: tuple(t.values))
