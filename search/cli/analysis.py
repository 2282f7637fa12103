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


def _layers(text: str | None) -> tuple[int, int] | None:
    """``--layers A:B`` as (A, B); the range is checked against the model's layers when it is loaded."""
    if text is None:
        return None
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise _error(f"--layers {text!r} is not A:B (two layer numbers, e.g. 1:2)") from None
    return first, last


def _thinking(args) -> bool | None:
    return False if args.no_thinking else None


def _kit(args, device: str):
    from abliterate.search.kit import StudyKit

    return StudyKit.open(args.storage, args.study, device)


def _artifacts(args):
    from abliterate.storage.artifacts import artifact_folder

    return artifact_folder(args.storage, args.artifacts)


def _out(args):
    from pathlib import Path

    return Path(args.out).expanduser() if args.out else None


def _analyze(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise _error(f"--methods: unknown {', '.join(unknown) or 'none given'}; use some of {', '.join(METHODS)}")
    from abliterate.search import measure

    if args.model:
        if not (args.harmful and args.harmless):
            raise _error("--model needs --harmful and --harmless prompt sources (or leave --model out and give --storage/--study)")
        if not args.out:
            raise _error("analyze --model writes only where --out DIR says; pass --out (a study's analysis has a default folder)")
        written = measure.analyze_model(args.model, args.harmful, args.harmless, _out(args), methods, args.categories, args.dtype,
                                        args.device, _thinking(args), args.batch_size)
    else:
        kit, artifacts = _kit(args, args.device), _artifacts(args)
        written = measure.analyze_study(kit, artifacts, methods, _out(args), args.categories, args.batch_size)
    _written(written, args, None if args.model else artifacts)
    return 0


def _written(written, args, artifacts) -> None:
    """Say what was written, and where the plots attached to the study are seen."""
    from abliterate.storage.urls import redacted

    for path in written.paths:
        print(f"wrote {path}")
    if written.attached:
        storage_flag = f" --storage {redacted(args.storage)}" if args.storage else ""
        print(f"attached {', '.join(written.attached)} to study {args.study!r} in {artifacts} (abliterate dashboard{storage_flag} "
              "shows them" + ("" if args.artifacts is None else f" with --artifacts {artifacts}") + ")")


def _dose(args) -> int:
    if (args.direction is None) == (args.trial is None):
        raise _error("give either --direction FILE (with --model) or --storage URL --study NAME --trial N")
    if args.direction and not args.out:
        raise _error("dose --direction writes only where --out DIR says; pass --out (a study's trial has a default folder)")
    if args.direction and not args.model:
        raise _error("--direction needs --model: the model the directions were computed on")
    layers = _layers(args.layers)
    from abliterate.search import measure

    kit, artifacts = (None, None) if args.direction else (_kit(args, args.device), _artifacts(args))
    # torch only now (the alphas are parsed by the library): a missing database or study is told at once
    from abliterate.objectives.analysis import parse_alphas

    alphas = parse_alphas(args.alphas)
    options = dict(mode=args.mode, layers=layers, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if kit is None:
        subject = measure.file_subject(args.direction, args.model, args.harmful or "advbench[0:64]", args.harmless or "benign[0:64]",
                                       args.edgy, args.direction_layer, args.dtype, args.device, _thinking(args))
        written = measure.Written(measure.dose(subject, alphas, _out(args), **options))
    else:
        written = measure.dose_of_trial(kit, args.trial, alphas, artifacts, _out(args), args.harmful,
                                        args.harmless, args.edgy, **options)
    _written(written, args, artifacts)
    return 0


def _controls(args) -> int:
    from abliterate.search import measure

    kit, artifacts = _kit(args, args.device), _artifacts(args)
    written = measure.controls(kit, args.trial, artifacts, args.random, args.seed, not args.no_holdout,
                               _out(args))
    _written(written, args, artifacts)
    return 0
