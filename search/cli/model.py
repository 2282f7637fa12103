"""Commands on single models: ``inspect``, ``directions``, ``evaluate``."""

from __future__ import annotations

from collections import Counter

from abliterate.ablation.locate import local_model
from abliterate.search.cli.common import (
    BATCH_HELP,
    METHODS,
    PROXIES,
    STORAGE_HELP,
    add_command,
    console,
    judge_options,
    judge_settings,
    load,
    model_options,
    positive,
    study_name,
)

# evaluate's prompt sets without --study or --harmful/--harmless: small, so that a first try is quick
DEFAULT_SETS = {"harmful": "demo-harmful", "harmless": "demo-harmless"}


def register(commands) -> None:
    inspect = add_command(commands, "inspect", "list every residual writer (and reader) the model has, per layer")
    model_options(inspect)
    inspect.set_defaults(run=_inspect)

    directions = add_command(commands, "directions", "capture residuals and compute refusal directions")
    model_options(directions)
    directions.add_argument("--harmful", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--harmless", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--method", choices=METHODS, default="mean")
    directions.add_argument("--out", required=True, help="safetensors file for residual means and directions")
    directions.add_argument("--batch-size", type=positive, default=16)
    directions.add_argument("--samples", action="store_true", help="also store every prompt's residuals")
    directions.set_defaults(run=_directions)

    evaluate = add_command(commands, "evaluate", "score an edited model against its base: KL, refusals, samples")
    model_options(evaluate)
    evaluate.add_argument("--base", required=True, help="the unedited model (hub id, folder or .gguf)")
    evaluate.add_argument("--storage", default=None, help="with --study: the study's storage (" + STORAGE_HELP + ")")
    evaluate.add_argument("--study", type=study_name, default=None,
                          help="take the prompt sets (and proxy, judge, answer length, thinking) of this study, so the figures compare with its own")
    evaluate.add_argument("--prompt-set", choices=("confirmation", "evaluation"), default="confirmation",
                          help="with --study: the held-out confirmation sets, or the evaluation sets its trials were scored on")
    evaluate.add_argument("--harmful", default=None, help=f"prompt source spec (default: the study's, or {DEFAULT_SETS['harmful']})")
    evaluate.add_argument("--harmless", default=None, help=f"prompt source spec (default: the study's, or {DEFAULT_SETS['harmless']})")
    evaluate.add_argument("--edgy", default=None, help="benign-but-edgy prompt source for an over-refusal rate")
    evaluate.add_argument("--proxy", choices=PROXIES, default=None, help="refusal measure (default: the study's, or markers)")
    evaluate.add_argument("--max-new-tokens", type=positive, default=None, help="answer length (default: the study's, or 48)")
    judge_options(evaluate, default_model="the base model, loaded again once the edited one is released")
    evaluate.set_defaults(judge=None)  # None: the study's judge with --study, else markers
    evaluate.add_argument("--agent-template", default=None, help="text file with {task} (agent proxy)")
    evaluate.add_argument("--capability", type=positive, default=None, metavar="TOKENS",
                          help="also the capability check: accuracy on the shipped multiple-choice questions and the median "
                               "length of greedy answers of at most TOKENS tokens to the harmless prompts, beside the base's")
    evaluate.add_argument("--batch-size", type=positive, default=64, help=BATCH_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)


def _inspect(args) -> int:
    local_model(args.model)  # a wrong path is told before torch is imported
    from abliterate.ablation.architectures import find_writers
    from abliterate.ablation.readers import find_readers

    loaded = load(args, tokenizer=False)  # the writers are in the weights: a folder without a tokenizer is fine
    print_writers(find_writers(loaded.model), title=f"residual writers of {args.model}")
    print_writers(find_readers(loaded.model), title=f"residual readers of {args.model} (edited by the read intervention)", kind="readers")
    return 0


def print_writers(writers, title: str, kind: str = "writers") -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("layer", "group", "module", "shape", "residual axis", "bias", "norm between"):
        table.add_column(column, overflow="fold")
    for w in writers:
        table.add_row(
            str(w.layer), w.group, w.name, "x".join(map(str, w.weight.shape)), str(w.residual_axis),
            "yes" if w.bias is not None else "", "yes" if w.norm_scale is not None else "",
        )
    out = console()
    out.print(table)
    groups = Counter(w.group for w in writers)
    experts = sum(w.experts or 0 for w in writers)
    layers = len({w.layer for w in writers})
    summary = ", ".join(f"{group} {count}" for group, count in sorted(groups.items()))
    out.print(f"{layers} layers, {len(writers)} {kind} ({summary}), {experts} routed experts")


def _directions(args) -> int:
    from pathlib import Path

    local_model(args.model)
    from abliterate.ablation.directions import by_method
    from abliterate.ablation.export import check_writable
    from abliterate.ablation.residuals import capture_last_token, save_residuals
    from abliterate.objectives.prompts import load_prompts

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    check_writable(Path(args.out).expanduser().resolve(), "the directions")  # before minutes of capture, not after
    loaded = load(args)
    thinking = False if args.no_thinking else None
    captured = {
        name: capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(prompts, enable_thinking=thinking), args.batch_size, progress=name)
        for name, prompts in (("harmful", harmful), ("harmless", harmless))
    }
    found, accuracy = by_method(args.method, captured["harmful"], captured["harmless"])
    if accuracy is not None:
        print("probe cross-validated accuracy per layer: " + " ".join(f"{a:.2f}" for a in accuracy.tolist()))
    save_residuals(args.out, captured["harmful"], captured["harmless"], found,
                   metadata={"model": args.model, "method": args.method}, samples=args.samples)
    print(f"wrote {args.out}: {found.shape[0]} layer directions ({args.method}) from "
          f"{len(harmful)} harmful and {len(harmless)} harmless prompts")
    return 0


def _evaluate(args) -> int:
    local_model(args.model)
    local_model(args.base)
    import json

    from rich.markup import escape

    from abliterate.ablation.errors import AblationError
    from abliterate.ablation.loading import load_model
    from abliterate.objectives.evaluate import evaluate
    from abliterate.objectives.prompts import load_prompts
    from abliterate.objectives.refusal import ChatFormat, make_proxy

    sets, origin, study = _evaluation_sets(args)
    harmful, harmless = load_prompts(sets["harmful"]), load_prompts(sets["harmless"])
    edgy = load_prompts(args.edgy) if args.edgy else None
    proxy_name = args.proxy or (study.proxy if study else "markers")
    max_new_tokens = args.max_new_tokens or (study.max_new_tokens if study else 48)
    thinking = False if args.no_thinking else (study.enable_thinking if study else None)
    chat = ChatFormat(enable_thinking=thinking)
    if args.judge is None and study is not None:  # the study's judge, with its model and prefilter
        args.judge, args.judge_model, args.judge_prefilter = study.judge, args.judge_model or study.judge_model, study.judge_prefilter
    args.judge = args.judge or "markers"
    if args.judge != "markers" and proxy_name != "markers":
        raise AblationError(f"--judge {args.judge} applies to the markers proxy only, not {proxy_name!r}; drop --judge or use --proxy markers")
    judge = judge_settings(args, args.device).build()
    proxy = make_proxy(proxy_name, max_new_tokens, args.batch_size, chat, judge, args.agent_template)
    used = {"harmful": {"source": sets["harmful"], "count": len(harmful)}, "harmless": {"source": sets["harmless"], "count": len(harmless)},
            **({"edgy": {"source": args.edgy, "count": len(edgy)}} if edgy else {}), "from": origin}

    def loader(spec):
        return lambda: load_model(spec, args.dtype, args.device, args.device_map, args.trust_remote_code)

    result = evaluate(loader(args.base), loader(args.model), harmful, harmless, proxy, chat, edgy, args.batch_size,
                      args.capability or 0)
    if args.json:
        print(json.dumps({**result.as_dict(), "prompt_sets": used}, indent=2))
        return 0
    out = console()
    sets_line = ", ".join(f"{side} {used[side]['source']} ({used[side]['count']})" for side in ("harmful", "harmless", "edgy") if side in used)
    out.print(f"prompt sets: {sets_line}; {origin}", highlight=False, soft_wrap=True)
    refusal, base = result.refusal, result.base_refusal
    out.print(f"KL (harmless, first token): {result.kl:.4f} over {len(harmless)} prompts")
    out.print(f"{proxy.name} proxy on {len(harmful)} harmful prompts: {refusal.value:.3f} (base {base.value:.3f})")
    if refusal.counts:
        out.print(f"  refusal rate {refusal.rate('refusal'):.3f} (base {base.rate('refusal'):.3f}), "
                  f"degenerate rate {refusal.rate('degenerate'):.3f}, counts {refusal.counts}")
    if result.over_refusal:
        out.print(f"over-refusal on {result.over_refusal.total} edgy prompts: {result.over_refusal.rate('refusal'):.3f}")
    if result.capability:
        c = result.capability
        out.print(f"capability: {c.accuracy:.0%} of {c.questions} questions right (base {c.base_accuracy:.0%}); harmless answers "
                  f"{c.median_length:.0f} tokens at the median (base {c.base_median_length:.0f}, at most {c.max_new_tokens})")
    for prompt, response in refusal.samples:
        out.print(f"[bold]> {escape(prompt)}[/]\n  {escape(response.strip()[:300])}", highlight=False)
    return 0


def _evaluation_sets(args) -> tuple[dict[str, str], str, object]:
    """The harmful and harmless specs to score on, where they came from (in words), and the
    study's settings when ``--study`` names one (None otherwise). Sets given on the command line
    win over the study's."""
    from abliterate.ablation.errors import AblationError

    if args.study is None:
        if args.storage is not None:
            raise AblationError("--storage names where a study is: add --study NAME to take its prompt sets")
        given = {side: getattr(args, side) for side in DEFAULT_SETS}
        sets = {side: spec or DEFAULT_SETS[side] for side, spec in given.items()}
        defaulted = [side for side, spec in given.items() if spec is None]
        origin = ("given" if not defaulted else
                  f"the demo sets by default for {' and '.join(defaulted)}: pass --harmful/--harmless, or --storage/--study for a study's own")
        return sets, origin, None
    from abliterate.search.study import load
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.urls import normalize_url, redacted

    config = load(open_storage(args.storage, create=False), args.study)[1]
    config.check_prompt_files()
    sets = {side: getattr(args, side) or getattr(config, side)[args.prompt_set] for side in DEFAULT_SETS}
    taken = [side for side in DEFAULT_SETS if getattr(args, side) is None]
    origin = (f"{' and '.join(taken)} from study {args.study!r} in {redacted(normalize_url(args.storage))} ({args.prompt_set} sets)"
              if taken else "given")
    return sets, origin, config
