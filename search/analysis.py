"""The specificity controls of a trial's edit, the words the promotion report, the trial's
note and the model card use for them, and what the analyses share (plots attached to a study, JSON).

A study's parts (prompts, cached directions, model, a trial's edit) come from its
:class:`search.kit.StudyKit`; ``abliterate analyze``, ``dose`` and ``controls`` are
:mod:`search.measure`, and the measurements :mod:`objectives.analysis` and
:mod:`objectives.dose`. Plots are attached to the study in an Optuna artifact store, which
optuna-dashboard shows (``abliterate dashboard --artifacts DIR``); controls' findings go on the
trial (user attrs ``controls`` and ``specific``, and a note section) so that ``front --json``
and the dashboard show them. The promoter runs the controls in each candidate's confirmation
(:class:`search.promoter.Promoter`); :func:`specificity_line` is their word in the promotion
report, the trial's note and the model card. Importing this module imports no torch: the
promoter's report and the card read the words only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from abliterate.ablation.errors import AblationError

if TYPE_CHECKING:
    import torch

    from abliterate.ablation.bake import Edit


def not_measurable(params: dict) -> str | None:
    """Why dose and controls cannot measure the edit of a trial's ``params``; None when they can.

    They scale or replace one direction, removed where the trial's intervention removes it (for
    ``heads``, the same heads whatever direction takes its place): a subspace or an amplification
    would be measured as another edit. Each registered method and intervention says whether it
    can be (``measurable``)."""
    from abliterate.ablation.candidate import IMPLIED
    from abliterate.ablation.registry import interventions, methods

    method, intervention = params["method"], params.get("intervention", IMPLIED["intervention"])
    if not methods.get(method).measurable:
        return f"dose and controls measure single-direction ablations; this trial uses {method}"
    if not interventions.get(intervention).measurable:
        return f"dose and controls measure single-direction ablations; this trial uses the {intervention} intervention"
    return None


def check_measurable(params: dict) -> None:
    """A one-line error when dose and controls cannot measure the trial of ``params`` (:func:`not_measurable`)."""
    from abliterate.ablation.registry import interventions, methods

    reason = not_measurable(params)
    if reason:
        def either(names: list[str]) -> str:
            return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)

        single = either([method.name for method in methods if method.measurable])
        kept = either([intervention.name for intervention in interventions if intervention.measurable])
        raise AblationError(f"{reason}; pick a trial of method {single} with intervention {kept}")


def trial_edit(params: dict, directions: dict[str, torch.Tensor], writers):
    """(candidate, edit) of a trial's params: exactly what the trial baked, on the unedited model
    of ``writers`` (a heads trial's heads are chosen there by its own direction; dose and controls
    bake every direction they try into these same heads, so a random direction is compared with
    the trial's at the same place). An edit that is not one direction is refused in one line."""
    from abliterate.ablation.candidate import candidate_from_params
    from abliterate.ablation.resolve import layers_of, resolve

    check_measurable(params)
    candidate = candidate_from_params(params, layers_of(directions))
    return candidate, resolve(candidate, directions, writers)


def measurable_edit(kit, params: dict):
    """The :class:`ablation.bake.Edit` of a trial's ``params`` on the study of ``kit``, which
    dose and controls measure; an edit that is not one direction (:func:`not_measurable`) is
    refused in one line, before anything loads. Dose and controls bake every direction they try
    into the trial's own heads (a heads trial), so a random direction is compared with the
    trial's at the same place."""
    check_measurable(params)
    return kit.edit(params)


def attach(storage, study, paths: list[Path], artifacts: str | Path, prefix: str = "") -> list[str]:
    """Upload ``paths`` to a file-system artifact store at ``artifacts``, attached to the study,
    each named ``prefix`` + its file name; returns the artifact ids. optuna-dashboard (0.13 and
    later; 0.21 here) lists them on the study's page when started with that store. Optuna keeps
    a trial's artifacts in its system attrs, which a finished trial no longer accepts, so a
    trial's plots go on the study under a ``trial-N-`` prefix."""
    import shutil
    import tempfile
    import warnings

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna.exceptions import ExperimentalWarning

    root = Path(artifacts).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(root))
    ids = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as staging:
        warnings.simplefilter("ignore", ExperimentalWarning)
        for path in paths:
            named = Path(staging) / f"{prefix}{Path(path).name}"
            shutil.copyfile(path, named)
            ids.append(upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study, storage=storage))
    return ids


# The holdout direction is learned on half the extraction prompts of each side: fewer than this
# many per side leaves halves of one prompt.
HOLDOUT_LEAST = 4


def holdout_unavailable(prompts: dict) -> str | None:
    """Why the holdout control cannot run on a study's ``prompts``; None when it can."""
    harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
    if min(len(harmful), len(harmless)) >= HOLDOUT_LEAST:
        return None
    return (f"a holdout direction needs at least {HOLDOUT_LEAST} extraction prompts per side, the study has "
            f"{len(harmful)} harmful and {len(harmless)} harmless")


def holdout_control(kit, params: dict, edit: Edit, log: Callable[[str], None] = lambda _: None) -> dict:
    """The trial's edit with its direction learned on one half of the extraction prompts (even
    positions) and scored on the other half and on the confirmation prompts, beside the study's
    own direction (``edit``, the trial's :class:`ablation.bake.Edit`) on the confirmation
    prompts; and the cosine of the two directions. A heads trial's directions are both baked
    into the trial's heads."""
    from dataclasses import replace

    import torch

    from abliterate.ablation import Baker
    from abliterate.ablation.candidate import candidate_from_params
    from abliterate.ablation.directions import by_method
    from abliterate.ablation.registry import methods
    from abliterate.objectives.dose import Scorer
    from abliterate.search.trial import capture_extraction

    loaded, chat, prompts, config = kit.model, kit.chat, kit.prompts, kit.config
    max_new_tokens, batch_size = config.max_new_tokens, config.batch_size
    harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
    reason = holdout_unavailable(prompts)
    if reason:
        raise AblationError(reason)
    residuals = capture_extraction(loaded, harmful[0::2], harmless[0::2], chat, batch_size)
    method, edit_direction = params["method"], edit.directions
    check_measurable(params)
    stored = by_method(method, *residuals)[0]
    learned = methods.get(method).directions(candidate_from_params(params, stored.shape[0]), stored)
    cosine = float(torch.nn.functional.cosine_similarity(learned.float().reshape(-1, learned.shape[-1]),
                                                         edit_direction.float().reshape(-1, learned.shape[-1])).mean())
    baker = Baker.for_model(loaded.model)
    other_half = Scorer(loaded, harmful[1::2], harmless[1::2], None, max_new_tokens, batch_size, chat)
    confirmation = Scorer(loaded, prompts["harmful", "confirmation"], prompts["harmless", "confirmation"], None, max_new_tokens,
                          batch_size, chat)
    base_other, base_confirmation = other_half.score(), confirmation.score()
    with baker.baked_into(replace(edit, directions=learned)):
        heldout, held_confirmation = other_half.score(), confirmation.score()
    with baker.baked_into(edit):
        edit_confirmation = confirmation.score()
    log(f"holdout direction (cosine {cosine:.3f} to the study's): refusal {heldout['refusal']:.2f} on the other half "
        f"(base {base_other['refusal']:.2f}), {held_confirmation['refusal']:.2f} on confirmation "
        f"(the study's direction {edit_confirmation['refusal']:.2f}, base {base_confirmation['refusal']:.2f})")
    return {"cosine_to_edit": cosine, "base_other_half": base_other, "heldout": heldout, "base_confirmation": base_confirmation,
            "confirmation": held_confirmation, "edit_confirmation": edit_confirmation}


def run_controls(kit, params: dict, count: int, seed: int = 0, holdout: bool = True,
                 log: Callable[[str], None] = lambda _: None) -> dict:
    """The specificity controls of a trial's edit (``params`` on the study of ``kit``, a
    :class:`search.kit.StudyKit`) on the study's evaluation prompts: ``count`` random directions
    baked with the trial's profile (:func:`objectives.dose.controls`) and, with ``holdout``, the
    holdout-learned direction. An edit that is not one direction is refused in one line."""
    import torch

    from abliterate.ablation import Baker
    from abliterate.objectives.dose import Scorer, controls

    edit = measurable_edit(kit, params)
    loaded, config = kit.model, kit.config  # the model first: --batch-size auto is settled as it loads
    scorer = Scorer(loaded, kit.prompts["harmful", "evaluation"], kit.prompts["harmless", "evaluation"], None,
                    config.max_new_tokens, config.batch_size, kit.chat)
    with torch.no_grad():
        result = controls(scorer, Baker.for_model(loaded.model), edit, count, seed, log)
        if holdout:
            result["holdout"] = holdout_control(kit, params, edit, log)
    return result


def controls_summary(result: dict) -> dict:
    """What a trial keeps of its controls (the user attr ``controls``): the verdict, the spreads,
    the random band and, when it ran, the holdout direction's refusal rates."""
    spec = result["specificity"]
    summary = {"specific": spec["specific"], "spreads": spec["spreads"], "drop": spec["drop"], "random": result["random_refusal"],
               "random_kl": result["random_kl"], "count": spec["band"]["count"], "seed": result["seed"]}
    if "holdout" in result:
        h = result["holdout"]
        summary["holdout"] = {"cosine_to_edit": h["cosine_to_edit"], "other_half": h["heldout"]["refusal"],
                              "base_other_half": h["base_other_half"]["refusal"], "confirmation": h["confirmation"]["refusal"],
                              "edit_confirmation": h["edit_confirmation"]["refusal"],
                              "base_confirmation": h["base_confirmation"]["refusal"]}
    return summary


def record_controls(storage, study, trial, result: dict) -> dict:
    """Controls' findings on the trial: user attrs ``controls`` (:func:`controls_summary`, which
    is returned) and ``specific``, and a ``Specificity controls`` note section."""
    from abliterate.storage.optuna_access import append_trial_note, set_trial_user_attrs
    from abliterate.storage.records import controls_attrs

    summary = controls_summary(result)
    set_trial_user_attrs(storage, trial, controls_attrs(summary))
    append_trial_note(storage, study, trial, "Specificity controls", verdict(result))
    return summary


def verdict(result: dict) -> str:
    """The controls' finding in one sentence (two with the holdout direction)."""
    spec, band = result["specificity"], result["specificity"]["band"]
    word = "specific" if spec["specific"] else "not specific"
    text = (f"{word}: refusal drop {spec['drop']:+.3f} against {band['count']} random directions' {band['mean']:+.3f} "
            f"(spread {band['spread']:.3f}, used {spec['spread_used']:.3f}): {spec['spreads']:.1f} spreads away "
            f"(specific above {spec['threshold_spreads']:g}); random KL {result['random_kl']['mean']:.4g} "
            f"(spread {result['random_kl']['spread']:.2g}), the edit's {result['edit']['kl']:.4g}")
    if "holdout" in result:
        h = controls_summary(result)["holdout"]
        text += (f". The direction learned on half the extraction prompts (cosine {h['cosine_to_edit']:.3f} to the study's): "
                 f"refusal {h['other_half']:.2f} on the other half (base {h['base_other_half']:.2f}), {h['confirmation']:.2f} "
                 f"on the confirmation prompts (the study's direction {h['edit_confirmation']:.2f}, base {h['base_confirmation']:.2f})")
    return text


def specificity_words(controls: dict | None) -> str:
    """The controls' finding in a few words: ``specific, its refusal drop 12.3 spreads from the
    band of 10 random directions``, ``not specific, ...``, or ``not run (why)``. ``controls`` is a
    :func:`controls_summary`, possibly just ``{"specific": ...}``, or ``{"not_run": why}`` / None
    when none ran."""
    if not controls or controls.get("specific") is None:
        why = (controls or {}).get("not_run")
        return f"not run ({why})" if why else "not run"
    word = "specific" if controls["specific"] else "not specific"
    if "spreads" not in controls:
        return word
    band = f" of {controls['count']} random directions" if "count" in controls else " of random directions"
    return f"{word}, its refusal drop {controls['spreads']:.1f} spreads from the band{band}"


def specificity_line(confirmation: dict) -> str | None:
    """The specificity controls' finding on a promotion's ``confirmation`` (see
    :meth:`search.promoter.Promoter.confirm`), for the trial's note, the report and the model
    card; None when the confirmation ran none (a candidate dropped before them, or an older
    promotion)."""
    if "controls" not in confirmation and "specific" not in confirmation:
        return None
    controls = confirmation.get("controls") or {"specific": confirmation.get("specific")}
    line = f"specificity controls: {specificity_words(controls)}"
    if controls.get("specific") is False:
        line += "; promoted as --include-not-specific asks" if confirmation["passed"] else "; dropped (--include-not-specific promotes it)"
    return line


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    return path
