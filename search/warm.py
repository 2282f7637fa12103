"""Warm start: another study's feasible front as the first trials of a new one.

A trial's positions (direction index, kernel peaks, falloffs, layer range) are fractions of the
depth, so a front found on one model is a meaningful start on another of a different depth.
Directions are never carried over (hidden sizes differ); each study uses its own. A carried
point is held inside the new study's space: a float outside its range is clipped, a choice the
space does not offer is replaced by the space's first, and the trial's user attrs say so.
"""

from __future__ import annotations

from ablation.errors import AblationError
from search.space import GROUPS, SearchSpace

WARM_ATTR = "warm_start"  # on an enqueued trial: where its params came from


def parse_source(text: str) -> tuple[str, str]:
    """``STORAGE_URL#STUDY`` as (url, study); a one-line error otherwise."""
    url, sep, study = text.rpartition("#")
    if not sep or not url or not study:
        raise AblationError(f"--warm-start wants STORAGE_URL#STUDY (e.g. sqlite:///old.db#my-study), got {text!r}")
    return url, study


# Each sampled param and the space field that bounds it.
def _bounds(space: SearchSpace) -> dict[str, tuple]:
    bounds = {"method": space.methods, "scope": space.scopes, "direction_index": space.direction_index,
              "first_layer": space.first_layer, "last_layer": space.last_layer, "norm_preserving": space.norm_preserving}
    for group in GROUPS:
        bounds |= {f"{group}_shape": space.shapes, f"{group}_peak": space.peak, f"{group}_peak_weight": space.peak_weight,
                   f"{group}_floor_fraction": space.floor_fraction, f"{group}_falloff": space.falloff}
    return bounds


def fit_to_space(params: dict, space: SearchSpace) -> tuple[dict, list[str]]:
    """``params`` held inside ``space``, and a note per value that had to change."""
    fitted, changes = {}, []
    for name, bound in _bounds(space).items():
        if name not in params:
            raise AblationError(f"the warm-start trial lacks the parameter {name!r}; it was not made by this version's search space")
        value = params[name]
        if isinstance(bound[0], (str, bool)):
            new = value if value in bound else bound[0]
        else:
            new = min(max(float(value), bound[0]), bound[1])
        if new != value:
            changes.append(f"{name} {value!r} -> {new!r}")
        fitted[name] = new
    return fitted, changes


def front_points(url: str, study_name: str, space: SearchSpace) -> list[tuple[dict, dict]]:
    """The feasible front of ``study_name`` at ``url`` as (params, user attrs) to enqueue, fewest
    refusals first; a one-line error when the study has no feasible finished trial."""
    from search.front import feasible_front
    from search.study import load
    from storage.rdb import open_storage
    from storage.urls import redacted

    study, _ = load(open_storage(url, create=False), study_name)
    front = feasible_front(study)
    if not front:
        raise AblationError(f"study {study_name!r} in {redacted(url)} has no feasible finished trial to warm-start from")
    points = []
    for trial in front:
        params, changes = fit_to_space(dict(trial.params), space)
        attrs = {WARM_ATTR: {"storage": redacted(url), "study": study_name, "trial": trial.number, "values": list(trial.values),
                             "changed": changes}}
        points.append((params, attrs))
    return points


def enqueue_front(study, points: list[tuple[dict, dict]]) -> int:
    """Enqueue ``points`` on ``study`` (an identical waiting trial is not enqueued twice); how many."""
    for params, attrs in points:
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    return len(points)
