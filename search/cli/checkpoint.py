"""``export``: a trial's checkpoint with its model card and reproduction record, from the study
or, without the study's database, from a checkpoint's ``reproduce.json``."""

from __future__ import annotations

from abliterate.search.cli.common import add_command, positive, study_options

DESCRIPTION = """\
Re-bake a trial and write its checkpoint: the Hugging Face folder (readable by a server running as
another user), README.md (a model card stating the edit, its figures and promotion), reproduce.json
and the directions used.

  abliterate export --storage URL --study NAME --trial N --out DIR
  abliterate export --from-file DIR/reproduce.json --model BASE --out DIR2   # same weights, bit for bit, no database
  abliterate export --storage URL --study NAME --trial N --out DIR --adapter 8   # a PEFT LoRA adapter of the base model
"""


def register(commands) -> None:
    export = add_command(commands, "export", "re-bake a trial and write its checkpoint, model card and reproduction record",
                         DESCRIPTION)
    study_options(export)
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--trial", type=int, help="the study's finished trial to export")
    source.add_argument("--from-file", metavar="FILE", help="a checkpoint's reproduce.json: rebuild its weights without the study")
    export.add_argument("--model", metavar="BASE", help="with --from-file: the base model (hub id, folder or .gguf file)")
    export.add_argument("--out", required=True)
    export.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: auto; with --from-file, the recorded device)")
    export.add_argument("--dtype", default=None, choices=("stored", "auto", "bf16", "fp16", "fp32"),
                        help="stored (the base model's own dtype, as its config states), bf16, fp16, fp32 or auto (bf16 on GPU, "
                             "fp32 on CPU) (default: stored; with --from-file, the recorded dtype)")
    export.add_argument("--adapter", metavar="RANK", type=positive, default=None,
                        help="write the edit as a PEFT LoRA adapter of at most this rank instead of the whole model: exact for "
                             "plain removals (rank 1 per direction, one more for amplify), the best rank-RANK fit of "
                             "norm-preserving edits (the record states its error)")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--force", action="store_true", help="export a trial over the study's KL cap too")
    export.add_argument("--base-model-id", metavar="ORG/NAME", default=None,
                        help="the base model's hub repository, for the card (default: the study's model when it names one)")
    export.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the checkpoint to this Hugging Face model repository")
    export.set_defaults(run=_export)


def _export(args) -> int:
    from abliterate.ablation.errors import AblationError

    if args.from_file and not args.model:
        raise AblationError("--from-file needs --model BASE: the base model the record was exported from")
    if args.trial is not None and args.model:
        raise AblationError("--model goes with --from-file; a study knows its model (use --trial alone)")
    if args.from_file and args.adapter:
        raise AblationError("--adapter goes with --trial; --from-file rebuilds what the record describes, an adapter or a model")
    if args.adapter:
        from abliterate.ablation.adapter import require_peft

        require_peft()  # before a model is loaded
    if args.from_file and args.dtype:
        raise AblationError("--dtype goes with --trial; --from-file rebuilds in the recorded dtype, bit for bit")
    from abliterate.ablation.export import check_target

    check_target(args.out, args.overwrite)  # before a model is loaded: a read-only or misnamed --out is told at once
    from abliterate.search.checkpoint import check_hub, export_trial, push, rebuild

    if args.push_to_hub:
        check_hub(args.push_to_hub)
    if args.from_file:
        out = rebuild(args.from_file, args.model, args.out, args.device, args.overwrite)
        print(f"rebuilt {out} from {args.from_file}: every weight file matches the recorded sha256")
    else:
        out = export_trial(args.storage, args.study, args.trial, args.out, args.device or "auto", args.overwrite, args.base_model_id,
                           args.force, args.dtype or "stored", args.adapter)
        what = "a LoRA adapter of the base model" if args.adapter else "a checkpoint"
        print(f"wrote trial {args.trial} of {args.study!r} to {out} as {what} (model card README.md, reproduce.json)")
    if args.push_to_hub:
        print(f"pushed to {push(out, args.push_to_hub)}")
    return 0
