"""Warm start: another study's feasible front as the first trials of a new one.

Every param the new study's space samples (:func:`search.space.distributions`) is carried from
the source trial, the options of the research spaces too (direction method, PCA component, cone
rank, SAE features, intervention, amplification strength, heads, calibration percentile):

* Positions (direction index, kernel peaks, falloffs, layer range) are fractions of the depth,
  so a front found on one model is a meaningful start on another of a different depth.
* ``heads`` (how many of the model's highest-scoring attention heads are edited) is a count,
  carried as it is and clamped into the new space's range: the source model's head count is not
  stored with its study, and the new space's range is the one chosen for the new model. The
  other counts (PCA component, cone rank, SAE features) do not depend on the model's size and
  are clamped the same way.
* A value outside the new space is held inside it: a number is clipped to the range (an integer
  rounded first); a choice the space does not offer becomes the nearest offered number
  (calibration percentiles) or else the space's first choice.
* A param the source lacks is what the source's edit implied (intervention ``ablate``,
  calibration 0: :data:`search.space.IMPLIED`) or, when nothing is implied, left to the new
  study's sampler. A param the new space does not sample is dropped.
* Directions are never carried over (hidden sizes differ); each study uses its own.

Each enqueued trial's user attr ``warm_start`` names its source trial and lists what changed,
what was dropped and what was left to the sampler.
"""

from __future__ import annotations

from abliterate.ablation.errors import AblationError
from abliterate.search.space import IMPLIED, PRESETS, SearchSpace, distributions
from abliterate.storage.records import TrialRecord


def parse_source(text: str) -> tuple[str, str]:
    """``STORAGE_URL#STUDY`` as (url, study); a one-line error otherwise."""
    url, sep, study = text.rpartition("#")
    if not sep or not url or not study:
        raise AblationError(f"--warm-start wants STORAGE_URL#STUDY (e.g. sqlite:///old.db#my-study), got {text!r}")
    return url, study


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def held_inside(value, distribution):
    """``value`` held inside an Optuna ``distribution`` (see the module's rules)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        numbers = [c for c in choices if _number(c)]
        if _number(value) and numbers:
            return min(numbers, key=lambda c: abs(c - value))  # the first of two as near
        return choices[0]
    if isinstance(distribution, IntDistribution):
        return min(max(int(round(value)), distribution.low), distribution.high)
    return min(max(float(value), distribution.low), distribution.high)


def fit_to_space(params: dict, space: SearchSpace) -> tuple[dict, dict]:
    """``params`` held inside ``space``, and what that took: ``changed`` (a note per value that
    had to change), ``dropped`` (params ``space`` does not sample) and ``sampled`` (params of
    ``space`` the source neither has nor implies, left to the sampler). A source lacking a param
    every space samples was not made by this version's search space: a one-line error."""
    core, wanted = distributions(PRESETS["ablate"]), distributions(space)  # core: the params every space samples
    fitted, changed, sampled = {}, [], []
    for name, distribution in wanted.items():
        if name in params:
            value = params[name]
        elif name in IMPLIED:
            value = IMPLIED[name]
        elif name in core:
            raise AblationError(f"the warm-start trial lacks the parameter {name!r}; it was not made by this version's search space")
        else:
            sampled.append(name)
            continue
        new = held_inside(value, distribution)
        if new != value:
            changed.append(f"{name} {value!r} -> {new!r}")
        fitted[name] = new
    return fitted, {"changed": changed, "dropped": sorted(set(params) - set(wanted)), "sampled": sampled}


def front_points(url: str, study_name: str, space: SearchSpace) -> list[tuple[dict, dict]]:
    """The feasible front of ``study_name`` at ``url`` as (params, user attrs) to enqueue, fewest
    refusals first; a one-line error when the study has no feasible finished trial."""
    from abliterate.search.front import feasible_front
    from abliterate.search.study import load
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.urls import redacted

    study, _ = load(open_storage(url, create=False), study_name)
    front = feasible_front(study)
    if not front:
        raise AblationError(f"study {study_name!r} in {redacted(url)} has no feasible finished trial to warm-start from")
    points = []
    for trial in front:
        params, fitting = fit_to_space(dict(trial.params), space)
        attrs = TrialRecord(warm_start={"storage": redacted(url), "study": study_name, "trial": trial.number,
                                        "values": list(trial.values), **fitting}).to_attrs()
        points.append((params, attrs))
    return points


def dropped(points: list[tuple[dict, dict]]) -> list[str]:
    """The params of any of ``points``' source trials that the new space does not sample."""
    return sorted({name for _, attrs in points for name in TrialRecord.from_attrs(attrs).warm_start["dropped"]})


def enqueue_front(study, points: list[tuple[dict, dict]]) -> int:
    """Enqueue ``points`` on ``study`` (an identical waiting trial is not enqueued twice); how many."""
    for params, attrs in points:
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    return len(points)
