"""The measurements behind ``abliterate analyze``, ``dose`` and ``controls``, as library calls.

Each takes typed arguments (a study as its :class:`search.kit.StudyKit`), says what it found
through ``log`` and returns a :class:`Written`: the files it wrote and the plots it attached to
the study (optuna-dashboard shows them). The statistics are :mod:`objectives.analysis` and
:mod:`objectives.dose`; the controls' own helpers, shared with the promoter, are
:mod:`search.analysis`. Bad input is one line (AblationError) before any file is written; torch
and the model load only once the arguments are known to be good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abliterate.ablation.errors import AblationError

if TYPE_CHECKING:
    import torch

    from abliterate.search.kit import StudyKit

Log = Callable[[str], None]


@dataclass(frozen=True)
class Written:
    """What a measurement wrote (``paths``) and the names of the plots it attached to its study."""

    paths: list[Path]
    attached: list[str] = field(default_factory=list)


def _attach(kit: StudyKit, paths: list[Path], artifacts: Path, prefix: str = "") -> list[str]:
    from abliterate.search.analysis import attach

    attach(kit.storage, kit.study, paths, artifacts, prefix)
    return [f"{prefix}{path.name}" for path in paths]


# ---- analyze ---------------------------------------------------------------------------------------


def categories_of(spec: str | None, harmful_source: str, count: int) -> tuple[list[str] | None, int | None]:
    """(labels, k) of ``--categories``: a column of the harmful source, or k-means with k chosen
    by silhouette (``kmeans``) or given (``kmeans:K``); (None, None) without the option."""
    if spec is None:
        return None, None
    if spec == "kmeans" or spec.startswith("kmeans:"):
        k = spec.removeprefix("kmeans").removeprefix(":")
        if k and not (k.isdigit() and 1 <= int(k) <= count):
            raise AblationError(f"--categories {spec}: K must be a whole number from 1 to the {count} harmful prompts")
        return None, int(k) if k else None
    from abliterate.objectives.categories import load_categories

    labels = load_categories(harmful_source, spec)
    if len(labels) != count:
        raise AblationError(f"--categories {spec}: {len(labels)} labels for {count} harmful prompts; give every prompt a category")
    return labels, None


def analyze_model(model: str, harmful: str, harmless: str, out: Path, methods: Sequence[str], categories: str | None = None,
                  dtype: str = "auto", device: str = "auto", enable_thinking: bool | None = None, batch_size: int = 16,
                  log: Log = print) -> Written:
    """Where refusal lives in ``model``, from the ``harmful`` and ``harmless`` prompt sources,
    written to ``out`` (analysis.json and its plots)."""
    from abliterate.objectives.prompts import load_prompts

    harmful_prompts, harmless_prompts = load_prompts(harmful), load_prompts(harmless)
    labels, k = categories_of(categories, harmful, len(harmful_prompts))
    from abliterate.ablation.loading import load_model
    from abliterate.objectives.refusal import ChatFormat

    loaded = load_model(model, dtype, device)
    return Written(_analyze(loaded, ChatFormat(enable_thinking=enable_thinking), harmful_prompts, harmless_prompts, methods,
                            bool(categories), labels, k, out, model, batch_size, log))


def analyze_study(kit: StudyKit, artifacts: Path, methods: Sequence[str], out: Path | None = None,
                  categories: str | None = None, batch_size: int = 16, log: Log = print) -> Written:
    """Where refusal lives in a study's model, from its extraction prompts, beside the cosines of
    the study's cached directions to the ones computed here; written to ``out`` (default: the
    study's folder in ``artifacts``), the plots attached to the study in ``artifacts``."""
    from abliterate.storage.artifacts import study_folder

    harmful, harmless = kit.prompts["harmful", "extraction"], kit.prompts["harmless", "extraction"]
    labels, k = categories_of(categories, kit.config.harmful["extraction"], len(harmful))
    cached = kit.payload()  # before the model: a study without directions is told at once
    paths = _analyze(kit.model, kit.chat, harmful, harmless, methods, bool(categories), labels, k,
                     out or study_folder(artifacts, kit.name), f"study {kit.name} ({kit.config.model})", batch_size, log, cached)
    return Written(paths, _attach(kit, paths[1:], artifacts))


def _analyze(loaded, chat, harmful: list[str], harmless: list[str], methods: Sequence[str], by_category: bool,
             labels: list[str] | None, k: int | None, out: Path, title: str, batch_size: int, log: Log,
             cached: dict[str, torch.Tensor] | None = None) -> list[Path]:
    from abliterate.objectives.analysis import analyze_layers
    from abliterate.objectives.plots import cosine_heatmap, layer_curves
    from abliterate.search.analysis import write_json
    from abliterate.search.trial import capture_extraction

    methods = list(methods)
    residuals = capture_extraction(loaded, harmful, harmless, chat, batch_size)
    analysis = analyze_layers(*residuals, methods)
    result = analysis.as_dict() | {"source": title}
    if cached is not None:
        # The study's own directions beside the ones computed here from the same prompts: equal up
        # to float noise unless the model or its prompts changed since the study was made.
        from abliterate.ablation.directions import METHODS, by_method

        result["cached_cosine"] = {}
        for method, cached_direction in cached.items():
            computed = by_method(method, *residuals)[0] if method in METHODS else None
            if computed is not None and computed.shape == cached_direction.shape:  # per-layer unit directions [L, H]
                result["cached_cosine"][method] = (computed * cached_direction).sum(-1).tolist()
    cone_line = None
    if by_category:
        from abliterate.objectives.analysis import analyze_categories

        result["categories"] = analyze_categories(*residuals, labels, k)
        # The cone is shown where the first method's classes lie furthest apart: where the feature is strongest.
        strongest = max(range(analysis.num_layers), key=lambda layer: analysis.strength[methods[0]][layer])
        cone = result["categories"][strongest]
        cone_line = (f"cone at layer {strongest}: {len(cone['categories'])} categories, effective dimension "
                     f"{cone['effective_dimension']:.2f}, silhouette {cone['silhouette']:.2f}; "
                     + ", ".join(f"{name} strength {size:.3g} specificity {own:.2f}"
                                 for name, size, own in zip(cone["categories"], cone["strength"], cone["specificity"])))
    paths = [write_json(out / "analysis.json", result), layer_curves(analysis, out / "layers.png", f"where refusal is readable: {title}"),
             cosine_heatmap(analysis, out / "cosines.png", f"cosines between methods: {title}")]
    if cone_line:
        from abliterate.objectives.plots import category_plot

        paths.append(category_plot(result["categories"], out / "categories.png", strongest, f"the refusal cone: {title}"))
        log(cone_line)
    for method in methods:
        log(f"{method}: highest AUC from layer {analysis.best_layer[method]} "
            f"(AUC {analysis.auc[method][analysis.best_layer[method]]:.3f})")
    log(f"mean difference, held out: highest AUC from layer {analysis.best_layer_heldout} "
        f"(AUC {analysis.auc_heldout[analysis.best_layer_heldout]:.3f}); probe accuracy per layer "
        + " ".join(f"{a:.2f}" for a in analysis.probe_accuracy))
    return paths


# ---- dose --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoseSubject:
    """What a dose sweep scales: a direction on a loaded model (baked with ``profile``, into
    ``heads`` when a heads trial chose them, for ``ablate``; added at ``layer`` for ``steer``),
    and the prompts each dose is scored on. ``stack``: per-layer directions [L, H] to steer with
    at each layer, when there are. ``origin``: where the direction comes from, as messages name it."""

    loaded: Any
    chat: Any
    harmful: list[str]
    harmless: list[str]
    edgy: list[str] | None
    direction: torch.Tensor
    stack: torch.Tensor | None
    profile: Any
    norm_preserving: bool
    heads: Any
    layer: int | None
    num_layers: int
    title: str
    origin: str


def file_subject(direction_file: str, model: str, harmful: str, harmless: str, edgy: str | None = None,
                 direction_layer: int | None = None, dtype: str = "auto", device: str = "auto",
                 enable_thinking: bool | None = None) -> DoseSubject:
    """One layer's direction of a directions file (abliterate directions) on ``model``, baked
    uniformly; the layer is ``direction_layer``, or where the file's class means lie furthest apart."""
    from abliterate.ablation.locate import local_model
    from abliterate.objectives.prompts import load_prompts

    local_model(model)
    edgy_prompts = None if edgy in (None, "none") else load_prompts(edgy)
    harmful_prompts, harmless_prompts = load_prompts(harmful), load_prompts(harmless)
    stack, means = _direction_file(direction_file)
    from abliterate.ablation.architectures import decoder_layers
    from abliterate.ablation.loading import load_model
    from abliterate.ablation.profile import Profile
    from abliterate.objectives.refusal import ChatFormat

    loaded = load_model(model, dtype, device)
    hidden, num_layers = loaded.model.config.get_text_config().hidden_size, len(decoder_layers(loaded.model))
    if stack.shape[-1] != hidden or (stack.dim() == 2 and stack.shape[0] != num_layers):
        raise AblationError(f"{direction_file} holds directions of shape {list(stack.shape)}, but {model} has {num_layers} layers of "
                            f"width {hidden}; compute them on this model with abliterate directions")
    layer = None
    if stack.dim() == 2:
        layer = direction_layer if direction_layer is not None else _furthest_apart(means, stack)
        if not 0 <= layer < num_layers:
            raise AblationError(f"--direction-layer {layer}: the model has layers 0 to {num_layers - 1}")
    return DoseSubject(loaded, ChatFormat(enable_thinking=enable_thinking), harmful_prompts, harmless_prompts, edgy_prompts,
                       stack if layer is None else stack[layer], None, Profile.uniform(1.0), False, None, layer, num_layers,
                       f"{model}, direction of layer {layer}" if layer is not None else model, direction_file)


def trial_subject(kit: StudyKit, trial_number: int, harmful: str | None = None, harmless: str | None = None,
                  edgy: str | None = None) -> DoseSubject:
    """A finished trial's own direction and profile (and heads) on the study's model, scored on
    the study's evaluation prompts unless other sources are given."""
    from abliterate.objectives.prompts import load_prompts
    from abliterate.search.analysis import check_measurable

    trial, _ = kit.finished_trial(trial_number), kit.prompts  # the prompt sets are checked before anything loads
    edgy_prompts = None if edgy in (None, "none") else load_prompts(edgy)
    harmful_prompts = load_prompts(harmful) if harmful else kit.prompts["harmful", "evaluation"]
    harmless_prompts = load_prompts(harmless) if harmless else kit.prompts["harmless", "evaluation"]
    check_measurable(trial.params)
    kit.payload()  # before the model: a study without directions is told at once
    edit, candidate = kit.edit(trial.params), kit.candidate(trial.params)
    direction, profile = edit.directions, edit.profile
    # Steering without --layers adds the vector where the direction was read (the profile's peak for per-layer directions).
    layer = round(candidate.direction_index if candidate.scope == "global" else profile.kernels["attn"].peak)
    return DoseSubject(kit.model, kit.chat, harmful_prompts, harmless_prompts, edgy_prompts, direction,
                       direction if direction.dim() == 2 else None, profile, edit.norm_preserving, edit.heads, layer,
                       kit.num_layers, f"trial {trial_number} of {kit.name}", f"trial {trial_number} of {kit.name}")


def dose(subject: DoseSubject, alphas: Sequence[float], out: Path, mode: str = "ablate", layers: tuple[int, int] | None = None,
         max_new_tokens: int = 48, batch_size: int = 16, log: Log = print) -> list[Path]:
    """Sweep ``alphas`` of the subject's direction (``ablate``: the edit's weights times alpha;
    ``steer``: alpha x unit direction x mean residual norm, added at inference) over ``layers``
    (A, B inclusive); dose.json and dose.png in ``out``; the paths."""
    import torch

    from abliterate.ablation import Baker
    from abliterate.ablation.bake import Edit
    from abliterate.ablation.profile import Profile
    from abliterate.objectives.dose import Scorer, ablation_intervention, dose_sweep, steering_intervention
    from abliterate.objectives.plots import dose_curves
    from abliterate.search.analysis import write_json

    loaded, profile, num_layers = subject.loaded, subject.profile, subject.num_layers
    if layers is not None and not 0 <= layers[0] <= layers[1] < num_layers:
        raise AblationError(f"--layers {layers[0]}:{layers[1]}: the model has layers 0 to {num_layers - 1}; "
                            f"give 0 <= A <= B <= {num_layers - 1}")
    if mode == "ablate":
        if layers:
            last = num_layers - 1 if profile.last_layer is None else profile.last_layer
            profile = Profile(profile.kernels, max(layers[0], profile.first_layer), min(layers[1], last))
        edit = Edit(subject.direction, profile, subject.norm_preserving, heads=subject.heads)
        intervention = ablation_intervention(Baker.for_model(loaded.model), edit)
    else:
        from abliterate.ablation.residuals import capture_last_token

        if layers is None and subject.layer is None:
            raise AblationError(f"{subject.origin} holds one direction without its layer; say where to steer with --layers A:B")
        steered = range(layers[0], layers[1] + 1) if layers else [subject.layer]
        residuals = capture_last_token(loaded.model, loaded.tokenizer, subject.chat.apply(loaded, subject.harmless), batch_size)
        norms = residuals.norm(dim=-1).mean(0)
        per_layer = {layer: subject.stack[layer] if subject.stack is not None else subject.direction for layer in steered}
        intervention = steering_intervention(loaded.model, per_layer, {layer: float(norms[layer]) for layer in steered})
    scorer = Scorer(loaded, subject.harmful, subject.harmless, subject.edgy, max_new_tokens, batch_size, subject.chat)
    with torch.no_grad():
        response = dose_sweep(scorer, intervention, list(alphas), log=log)

    def dose_text(value):
        return "not reached" if value is None else f"{value:+.3f}"

    log(f"refusal crosses 50% at alpha {dose_text(response.refusal_50)}; over-refusal at {dose_text(response.over_refusal_50)}"
        + ("" if subject.edgy else " (no --edgy prompts)")
        + (f"; therapeutic index {response.therapeutic_index:.2f}" if response.therapeutic_index is not None else ""))
    result = response.as_dict() | {"mode": mode, "source": subject.title, "layers": None if layers is None else f"{layers[0]}:{layers[1]}",
                                   "harmful": len(subject.harmful), "harmless": len(subject.harmless), "edgy": len(subject.edgy or [])}
    return [write_json(out / "dose.json", result), dose_curves(response, out / "dose.png", mode, f"dose response: {subject.title}")]


def dose_of_trial(kit: StudyKit, trial_number: int, alphas: Sequence[float], artifacts: Path, out: Path | None = None,
                  harmful: str | None = None, harmless: str | None = None, edgy: str | None = None, mode: str = "ablate",
                  layers: tuple[int, int] | None = None, max_new_tokens: int = 48, batch_size: int = 16,
                  log: Log = print) -> Written:
    """:func:`dose` of a finished trial (:func:`trial_subject`), written to ``out`` (default: the
    trial's folder in ``artifacts``), its plot attached to the study."""
    from abliterate.storage.artifacts import study_folder

    subject = trial_subject(kit, trial_number, harmful, harmless, edgy)
    paths = dose(subject, alphas, out or study_folder(artifacts, kit.name, trial_number), mode, layers, max_new_tokens,
                 batch_size, log)
    return Written(paths, _attach(kit, paths[1:], artifacts, f"trial-{trial_number}-"))


def _direction_file(path: str):
    """(directions [L, H] or [H], per-layer class means or None) from a directions file."""
    if not Path(path).expanduser().is_file():
        raise AblationError(f"direction file {path} does not exist; write one with abliterate directions --out FILE")
    from safetensors import SafetensorError

    from abliterate.ablation.residuals import load_residuals

    try:
        tensors = load_residuals(Path(path).expanduser())
    except (SafetensorError, OSError, ValueError) as error:
        raise AblationError(f"{path} is not a safetensors directions file ({error}); write one with abliterate directions --out FILE") from None
    stack = tensors.get("directions")
    if stack is None or stack.dim() not in (1, 2):
        raise AblationError(f"{path} holds no 'directions' tensor of shape [layers, hidden] or [hidden]; write one with abliterate directions")
    means = (tensors["harmful_mean"], tensors["harmless_mean"]) if "harmful_mean" in tensors and "harmless_mean" in tensors else None
    return stack.float(), means


def _furthest_apart(means, stack) -> int:
    """The layer whose class means lie furthest apart relative to the harmless mean's norm (the
    middle layer when the file has no means)."""
    if stack.dim() == 1:
        return 0
    if means is None:
        return stack.shape[0] // 2
    harmful, harmless = means
    return int(((harmful - harmless).norm(dim=-1) / harmless.norm(dim=-1).clamp_min(1e-12)).argmax())


# ---- controls ------------------------------------------------------------------------------------------


def controls(kit: StudyKit, trial_number: int, artifacts: Path, count: int = 20, seed: int = 0, holdout: bool = True,
             out: Path | None = None, log: Log = print) -> Written:
    """A finished trial's edit against ``count`` random directions and, with ``holdout``, the
    holdout-learned direction (:func:`search.analysis.run_controls`); the findings recorded on
    the trial, controls.json and controls.png in ``out`` (default: the trial's folder in
    ``artifacts``), the plot attached to the study."""
    from abliterate.storage.artifacts import study_folder

    trial, _ = kit.finished_trial(trial_number), kit.prompts  # the prompt sets are checked before anything loads
    from abliterate.objectives.plots import controls_plot
    from abliterate.search.analysis import check_measurable, record_controls, run_controls, verdict, write_json

    check_measurable(trial.params)
    kit.payload()  # before the model: a study without directions is told at once
    result = run_controls(kit, trial.params, count, seed, holdout, log=log)
    record_controls(kit.storage, kit.study, trial, result)
    log(f"trial {trial_number}: {verdict(result)}")
    out = out or study_folder(artifacts, kit.name, trial_number)
    paths = [write_json(out / "controls.json", result | {"study": kit.name, "trial": trial_number}),
             controls_plot(result, out / "controls.png", f"controls: trial {trial_number} of {kit.name}")]
    return Written(paths, _attach(kit, paths[1:], artifacts, f"trial-{trial_number}-"))
