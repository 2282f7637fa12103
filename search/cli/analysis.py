"""Analyses of a model or a study: ``analyze`` (where refusal lives), ``dose`` (how behaviour
responds to the strength of an intervention), ``controls`` (whether a trial's edit does more
than a random direction would)."""

from __future__ import annotations

import re

from abliterate.search.cli.common import BATCH_HELP, METHODS, add_command, positive, study_options

DEFAULT_ALPHAS = "-2,-1,-0.5,0,0.5,1,2"
ARTIFACTS_HELP = ("the study's artifact folder: an Optuna file-system artifact store the plots are attached in, which "
                  "abliterate dashboard shows (default: $ABLITERATE_ARTIFACTS, else abliterate-artifacts beside the SQLite "
                  "database, or in the current folder for PostgreSQL)")


def register(commands) -> None:
    analyze = add_command(commands, "analyze", "per layer: direction strength per method, cosines, AUC, probe accuracy; JSON and plots")
    analyze.add_argument("--model", default=None, help="a model (hub id, folder or .gguf); or leave out and give --study")
    analyze.add_argument("--harmful", default=None, help="with --model: harmful prompt source spec")
    analyze.add_argument("--harmless", default=None, help="with --model: harmless prompt source spec")
    study_options(analyze)
    analyze.add_argument("--methods", default="mean,mean-projected,pca,probe", help="comma-separated direction methods")
    analyze.add_argument("--categories", default=None, metavar="FIELD|kmeans[:K]",
                         help="the refusal cone: one direction per category, from a column of the harmful source or k-means clusters")
    analyze.add_argument("--out", default=None,
                         help="folder for analysis.json, layers.png, cosines.png (needed with --model; for a study, default: "
                              "the study's folder in the artifact folder, ARTIFACTS/STUDY)")
    analyze.add_argument("--artifacts", default=None, metavar="DIR", help=ARTIFACTS_HELP)
    _run_options(analyze)
    analyze.set_defaults(run=_analyze)

    dose = add_command(commands, "dose", "dose-response sweep of one direction: refusal, over-refusal, degenerate, KL per alpha")
    dose.add_argument("--model", default=None, help="with --direction: the model (hub id, folder or .gguf)")
    dose.add_argument("--direction", default=None, help="a directions file written by abliterate directions")
    dose.add_argument("--direction-layer", type=int, default=None,
                      help="with --direction: the layer whose direction is used (default: where the class means lie furthest apart)")
    study_options(dose)
    dose.add_argument("--trial", type=int, default=None, help="a finished trial of --study: its direction and profile")
    dose.add_argument("--alphas", default=DEFAULT_ALPHAS, help="comma-separated doses")
    # "--alphas -2,-1,0" reads as a value, not as an option: argparse only knows "-2" as a number.
    dose._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")
    dose.add_argument("--mode", choices=("ablate", "steer"), default="ablate",
                      help="ablate: the edit's weights times alpha; steer: alpha x unit direction x mean residual norm, added at inference")
    dose.add_argument("--layers", default=None, metavar="A:B",
                      help="layers A to B inclusive (ablate: within the profile; steer: where the vector is added; "
                           "default: every layer for ablate, the direction's layer for steer)")
    dose.add_argument("--harmful", default=None, help="prompt source (default: the study's evaluation set, or advbench[0:64])")
    dose.add_argument("--harmless", default=None, help="prompt source (default: the study's evaluation set, or benign[0:64])")
    dose.add_argument("--edgy", default="rho-edgy[0:64]", help="benign-but-edgy prompts for over-refusal ('none' to skip)")
    dose.add_argument("--max-new-tokens", type=positive, default=48)
    dose.add_argument("--out", default=None,
                      help="folder for dose.json and dose.png (needed with --direction; for a trial, default: ARTIFACTS/STUDY/trial-N)")
    dose.add_argument("--artifacts", default=None, metavar="DIR", help=ARTIFACTS_HELP)
    _run_options(dose)
    dose.set_defaults(run=_dose)

    controls = add_command(commands, "controls", "a trial's edit against random directions of the same norm and a holdout-learned direction")
    study_options(controls)
    controls.add_argument("--trial", type=int, required=True, help="a finished trial of --study")
    controls.add_argument("--random", type=positive, default=20, help="random directions baked with the trial's profile")
    controls.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    controls.add_argument("--no-holdout", action="store_true", help="skip the holdout-learned direction")
    controls.add_argument("--out", default=None, help="folder for controls.json and controls.png (default: ARTIFACTS/STUDY/trial-N)")
    controls.add_argument("--artifacts", default=None, metavar="DIR", help=ARTIFACTS_HELP)
    controls.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    controls.set_defaults(run=_controls)


def _run_options(parser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-thinking", action="store_true", help="turn thinking off in the chat template (Qwen3/3.5)")
    parser.add_argument("--batch-size", type=positive, default=16, help=BATCH_HELP)


def _error(message: str):
    from abliterate.ablation.errors import AblationError

    return AblationError(message)


def _layer_range(text: str | None, num_layers: int) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise _error(f"--layers {text!r} is not A:B (two layer numbers, e.g. 1:2)") from None
    if not 0 <= first <= last < num_layers:
        raise _error(f"--layers {text}: the model has layers 0 to {num_layers - 1}; give 0 <= A <= B <= {num_layers - 1}")
    return first, last


def _analyze(args) -> int:
    from pathlib import Path

    from abliterate.objectives.prompts import load_prompts

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise _error(f"--methods: unknown {', '.join(unknown) or 'none given'}; use some of {', '.join(METHODS)}")
    storage = study = None
    if args.model:
        if not (args.harmful and args.harmless):
            raise _error("--model needs --harmful and --harmless prompt sources (or leave --model out and give --storage/--study)")
        if not args.out:
            raise _error("analyze --model writes only where --out DIR says; pass --out (a study's analysis has a default folder)")
        harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
        labels, k = _categories(args.categories, args.harmful, len(harmful))
        out = Path(args.out).expanduser()
    else:
        from abliterate.search.analysis import open_study
        from abliterate.storage.artifacts import artifact_folder, study_folder

        storage, study, config = open_study(args.storage, args.study)
        prompts = config.prompts()
        harmful, harmless = prompts["harmful", "extraction"], prompts["harmless", "extraction"]
        labels, k = _categories(args.categories, config.harmful["extraction"], len(harmful))
        artifacts = artifact_folder(args.storage, args.artifacts)
        out = Path(args.out).expanduser() if args.out else study_folder(artifacts, args.study)
    # torch, transformers and scikit-learn only now: bad arguments are told at once
    from abliterate.ablation.loading import load_model
    from abliterate.objectives.analysis import analyze_layers
    from abliterate.objectives.plots import cosine_heatmap, layer_curves
    from abliterate.objectives.refusal import ChatFormat
    from abliterate.search.analysis import write_json
    from abliterate.search.trial import capture_extraction

    if study is None:
        loaded, title = load_model(args.model, args.dtype, args.device), args.model
        chat = ChatFormat(enable_thinking=False if args.no_thinking else None)
    else:
        from abliterate.search.analysis import cached_directions, chat_of, load_study_model

        cached = cached_directions(storage, args.study, config)
        loaded, chat, title = load_study_model(config, args.device), chat_of(config), f"study {args.study} ({config.model})"
    residuals = capture_extraction(loaded, harmful, harmless, chat, args.batch_size)
    analysis = analyze_layers(*residuals, methods)
    result = analysis.as_dict() | {"source": title}
    if study is not None:
        # The study's own directions beside the ones computed here from the same prompts: equal up
        # to float noise unless the model or its prompts changed since the study was made.
        from abliterate.ablation.directions import by_method

        result["cached_cosine"] = {}
        for method, cached_direction in cached.items():
            computed = by_method(method, *residuals)[0] if method in METHODS else None
            if computed is not None and computed.shape == cached_direction.shape:  # per-layer unit directions [L, H]
                result["cached_cosine"][method] = (computed * cached_direction).sum(-1).tolist()
    cone_line = None
    if args.categories:
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
        print(cone_line)
    for method in methods:
        print(f"{method}: highest AUC from layer {analysis.best_layer[method]} "
              f"(AUC {analysis.auc[method][analysis.best_layer[method]]:.3f})")
    print(f"mean difference, held out: highest AUC from layer {analysis.best_layer_heldout} "
          f"(AUC {analysis.auc_heldout[analysis.best_layer_heldout]:.3f}); probe accuracy per layer "
          + " ".join(f"{a:.2f}" for a in analysis.probe_accuracy))
    for path in paths:
        print(f"wrote {path}")
    if study is not None:
        _attach(storage, study, paths[1:], artifacts, args)
    return 0


def _attach(storage, study, paths, artifacts, args, prefix: str = "") -> None:
    """Attach ``paths`` (plots) to the study in the artifact folder, and say where and how to see them."""
    from abliterate.search.analysis import attach
    from abliterate.storage.urls import redacted

    attach(storage, study, paths, artifacts, prefix)
    names = ", ".join(f"{prefix}{path.name}" for path in paths)
    storage_flag = f" --storage {redacted(args.storage)}" if args.storage else ""
    print(f"attached {names} to study {args.study!r} in {artifacts} (abliterate dashboard{storage_flag} shows them"
          + ("" if args.artifacts is None else f" with --artifacts {artifacts}") + ")")


def _categories(spec: str | None, harmful_source: str, count: int) -> tuple[list[str] | None, int | None]:
    """(labels, k) of ``--categories``: a column of the harmful source, or k-means with k chosen
    by silhouette (``kmeans``) or given (``kmeans:K``); (None, None) without the option."""
    if spec is None:
        return None, None
    if spec == "kmeans" or spec.startswith("kmeans:"):
        k = spec.removeprefix("kmeans").removeprefix(":")
        if k and not (k.isdigit() and 1 <= int(k) <= count):
            raise _error(f"--categories {spec}: K must be a whole number from 1 to the {count} harmful prompts")
        return None, int(k) if k else None
    from abliterate.objectives.categories import load_categories

    labels = load_categories(harmful_source, spec)
    if len(labels) != count:
        raise _error(f"--categories {spec}: {len(labels)} labels for {count} harmful prompts; give every prompt a category")
    return labels, None


def _dose(args) -> int:
    from pathlib import Path

    if (args.direction is None) == (args.trial is None):
        raise _error("give either --direction FILE (with --model) or --storage URL --study NAME --trial N")
    if args.direction and not args.out:
        raise _error("dose --direction writes only where --out DIR says; pass --out (a study's trial has a default folder)")
    edit = _file_edit(args) if args.direction else _trial_edit(args)
    from dataclasses import replace

    import torch

    from abliterate.ablation import Baker, find_writers
    from abliterate.ablation.profile import Profile
    from abliterate.objectives.dose import Scorer, ablation_intervention, dose_sweep, steering_intervention
    from abliterate.objectives.plots import dose_curves
    from abliterate.search.analysis import write_json

    alphas, loaded, baked, num_layers = edit["alphas"], edit["loaded"], edit["edit"], edit["num_layers"]
    span = _layer_range(args.layers, num_layers)
    if args.mode == "ablate":
        if span:
            profile = baked.profile
            last = num_layers - 1 if profile.last_layer is None else profile.last_layer
            baked = replace(baked, profile=Profile(profile.kernels, max(span[0], profile.first_layer), min(span[1], last)))
        intervention = ablation_intervention(Baker(find_writers(loaded.model)), baked)
    else:
        from abliterate.ablation.residuals import capture_last_token

        if span is None and edit["layer"] is None:
            raise _error(f"{args.direction} holds one direction without its layer; say where to steer with --layers A:B")
        layers = range(span[0], span[1] + 1) if span else [edit["layer"]]
        residuals = capture_last_token(loaded.model, loaded.tokenizer, edit["chat"].apply(loaded, edit["harmless"]), args.batch_size)
        norms = residuals.norm(dim=-1).mean(0)
        stack = edit["stack"]
        per_layer = {layer: stack[layer] if stack is not None else baked.directions for layer in layers}
        intervention = steering_intervention(loaded.model, per_layer, {layer: float(norms[layer]) for layer in layers})
    scorer = Scorer(loaded, edit["harmful"], edit["harmless"], edit["edgy"], args.max_new_tokens, args.batch_size, edit["chat"])
    with torch.no_grad():
        response = dose_sweep(scorer, intervention, alphas, log=print)

    def dose_text(value):
        return "not reached" if value is None else f"{value:+.3f}"

    print(f"refusal crosses 50% at alpha {dose_text(response.refusal_50)}; over-refusal at {dose_text(response.over_refusal_50)}"
          + ("" if edit["edgy"] else " (no --edgy prompts)")
          + (f"; therapeutic index {response.therapeutic_index:.2f}" if response.therapeutic_index is not None else ""))
    out = Path(args.out).expanduser() if args.out else edit["out"]
    result = response.as_dict() | {"mode": args.mode, "source": edit["title"], "layers": args.layers, "harmful": len(edit["harmful"]),
                                   "harmless": len(edit["harmless"]), "edgy": len(edit["edgy"] or [])}
    paths = [write_json(out / "dose.json", result), dose_curves(response, out / "dose.png", args.mode, f"dose response: {edit['title']}")]
    for path in paths:
        print(f"wrote {path}")
    if args.trial is not None:
        _attach(edit["storage"], edit["study"], paths[1:], edit["artifacts"], args, prefix=f"trial-{args.trial}-")
    return 0


def _file_edit(args) -> dict:
    """What ``dose --direction FILE --model M`` sweeps: the direction of one layer, baked
    uniformly (ablate) or added at that layer (steer)."""
    from abliterate.ablation.locate import local_model
    from abliterate.objectives.prompts import load_prompts

    if not args.model:
        raise _error("--direction needs --model: the model the directions were computed on")
    local_model(args.model)
    edgy = _edgy(args)
    harmful, harmless = load_prompts(args.harmful or "advbench[0:64]"), load_prompts(args.harmless or "benign[0:64]")
    stack, means = _direction_file(args.direction)
    from abliterate.ablation.architectures import decoder_layers
    from abliterate.ablation.bake import Edit
    from abliterate.ablation.loading import load_model
    from abliterate.ablation.profile import Profile
    from abliterate.objectives.analysis import parse_alphas
    from abliterate.objectives.refusal import ChatFormat

    alphas = parse_alphas(args.alphas)
    loaded = load_model(args.model, args.dtype, args.device)
    hidden, num_layers = loaded.model.config.get_text_config().hidden_size, len(decoder_layers(loaded.model))
    if stack.shape[-1] != hidden or (stack.dim() == 2 and stack.shape[0] != num_layers):
        raise _error(f"{args.direction} holds directions of shape {list(stack.shape)}, but {args.model} has {num_layers} layers of "
                     f"width {hidden}; compute them on this model with abliterate directions")
    layer = None
    if stack.dim() == 2:
        layer = args.direction_layer if args.direction_layer is not None else _furthest_apart(means, stack)
        if not 0 <= layer < num_layers:
            raise _error(f"--direction-layer {layer}: the model has layers 0 to {num_layers - 1}")
    return {"alphas": alphas, "loaded": loaded, "chat": ChatFormat(enable_thinking=False if args.no_thinking else None), "harmful": harmful,
            "harmless": harmless, "edgy": edgy, "edit": Edit(stack if layer is None else stack[layer], Profile.uniform(1.0)),
            "stack": None, "layer": layer, "num_layers": num_layers,
            "title": f"{args.model}, direction of layer {layer}" if layer is not None else args.model}


def _trial_edit(args) -> dict:
    """What ``dose --study NAME --trial N`` sweeps: the trial's own direction and profile on the
    study's evaluation prompts (unless other sources are given)."""
    from abliterate.objectives.prompts import load_prompts
    from abliterate.search.analysis import finished_trial, open_study
    from abliterate.storage.artifacts import artifact_folder, study_folder

    storage, study, config = open_study(args.storage, args.study)
    trial = finished_trial(study, args.trial)
    edgy = _edgy(args)
    prompts = config.prompts()
    harmful = load_prompts(args.harmful) if args.harmful else prompts["harmful", "evaluation"]
    harmless = load_prompts(args.harmless) if args.harmless else prompts["harmless", "evaluation"]
    artifacts = artifact_folder(args.storage, args.artifacts)
    from abliterate.ablation.architectures import decoder_layers, find_writers
    from abliterate.objectives.analysis import parse_alphas
    from abliterate.search.analysis import cached_directions, chat_of, check_measurable, load_study_model, trial_edit

    alphas = parse_alphas(args.alphas)
    directions = cached_directions(storage, args.study, config)
    check_measurable(trial.params)  # before the model loads
    loaded = load_study_model(config, args.device)
    candidate, edit = trial_edit(trial.params, directions, find_writers(loaded.model))
    # Steering without --layers adds the vector where the direction was read (the profile's peak for per-layer directions).
    layer = round(candidate.direction_index if candidate.scope == "global" else edit.profile.kernels["attn"].peak)
    return {"alphas": alphas, "loaded": loaded, "chat": chat_of(config), "harmful": harmful, "harmless": harmless, "edgy": edgy,
            "edit": edit, "stack": edit.directions if edit.directions.dim() == 2 else None, "layer": layer,
            "num_layers": len(decoder_layers(loaded.model)), "title": f"trial {args.trial} of {args.study}",
            "storage": storage, "study": study, "artifacts": artifacts, "out": study_folder(artifacts, args.study, args.trial)}


def _edgy(args):
    from abliterate.objectives.prompts import load_prompts

    return None if args.edgy in (None, "none") else load_prompts(args.edgy)


def _direction_file(path: str):
    """(directions [L, H] or [H], per-layer class means or None) from a directions file."""
    from pathlib import Path

    if not Path(path).expanduser().is_file():
        raise _error(f"direction file {path} does not exist; write one with abliterate directions --out FILE")
    from safetensors import SafetensorError

    from abliterate.ablation.residuals import load_residuals

    try:
        tensors = load_residuals(Path(path).expanduser())
    except (SafetensorError, OSError, ValueError) as error:
        raise _error(f"{path} is not a safetensors directions file ({error}); write one with abliterate directions --out FILE") from None
    stack = tensors.get("directions")
    if stack is None or stack.dim() not in (1, 2):
        raise _error(f"{path} holds no 'directions' tensor of shape [layers, hidden] or [hidden]; write one with abliterate directions")
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


def _controls(args) -> int:
    from pathlib import Path

    from abliterate.search.analysis import finished_trial, open_study
    from abliterate.storage.artifacts import artifact_folder, study_folder

    storage, study, config = open_study(args.storage, args.study)
    trial = finished_trial(study, args.trial)
    prompts = config.prompts()
    artifacts = artifact_folder(args.storage, args.artifacts)
    out = Path(args.out).expanduser() if args.out else study_folder(artifacts, args.study, args.trial)
    from abliterate.objectives.plots import controls_plot
    from abliterate.search.analysis import cached_directions, load_study_model, record_controls, run_controls, verdict, write_json

    directions = cached_directions(storage, args.study, config)
    loaded = load_study_model(config, args.device)
    result = run_controls(loaded, config, prompts, trial.params, directions, args.random, args.seed, not args.no_holdout, log=print)
    record_controls(storage, study, trial, result)
    print(f"trial {args.trial}: {verdict(result)}")
    paths = [write_json(out / "controls.json", result | {"study": args.study, "trial": args.trial}),
             controls_plot(result, out / "controls.png", f"controls: trial {args.trial} of {args.study}")]
    for path in paths:
        print(f"wrote {path}")
    _attach(storage, study, paths[1:], artifacts, args, prefix=f"trial-{args.trial}-")
    return 0
