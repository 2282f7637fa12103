"""Commands on single models: ``inspect``, ``directions``, ``evaluate``."""

from __future__ import annotations

from collections import Counter

from search.cli.common import (
    BATCH_HELP,
    METHODS,
    PROXIES,
    add_command,
    console,
    judge_options,
    judge_settings,
    load,
    model_options,
    positive,
)


def register(commands) -> None:
    inspect = add_command(commands, "inspect", "list every residual writer the model has, per layer")
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
    evaluate.add_argument("--harmful", default="demo-harmful", help="prompt source spec")
    evaluate.add_argument("--harmless", default="demo-harmless", help="prompt source spec")
    evaluate.add_argument("--edgy", default=None, help="benign-but-edgy prompt source for an over-refusal rate")
    evaluate.add_argument("--proxy", choices=PROXIES, default="markers")
    evaluate.add_argument("--max-new-tokens", type=positive, default=48)
    judge_options(evaluate, default_model="the base model, loaded again once the edited one is released")
    evaluate.add_argument("--agent-template", default=None, help="text file with {task} (agent proxy)")
    evaluate.add_argument("--batch-size", type=positive, default=64, help=BATCH_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)


def _inspect(args) -> int:
    from ablation.architectures import find_writers

    loaded = load(args)
    print_writers(find_writers(loaded.model), title=f"residual writers of {args.model}")
    return 0


def print_writers(writers, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("layer", "group", "module", "shape", "residual axis", "bias", "post-norm"):
        table.add_column(column, overflow="fold")
    for w in writers:
        table.add_row(
            str(w.layer), w.group, w.name, "x".join(map(str, w.weight.shape)), str(w.residual_axis),
            "yes" if w.bias is not None else "", "yes" if w.post_norm_scale is not None else "",
        )
    out = console()
    out.print(table)
    groups = Counter(w.group for w in writers)
    experts = sum(w.experts or 0 for w in writers)
    layers = len({w.layer for w in writers})
    summary = ", ".join(f"{group} {count}" for group, count in sorted(groups.items()))
    out.print(f"{layers} layers, {len(writers)} writers ({summary}), {experts} routed experts")


def _directions(args) -> int:
    from ablation.directions import by_method
    from ablation.residuals import capture_last_token, save_residuals
    from objectives.prompts import load_prompts

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
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
    import json

    from rich.markup import escape

    from ablation.loading import load_model
    from objectives.evaluate import evaluate
    from objectives.prompts import load_prompts
    from objectives.refusal import ChatFormat, make_proxy

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    edgy = load_prompts(args.edgy) if args.edgy else None
    chat = ChatFormat(enable_thinking=False if args.no_thinking else None)
    if args.judge != "markers" and args.proxy != "markers":
        from ablation.errors import AblationError

        raise AblationError(f"--judge {args.judge} applies to the markers proxy only, not {args.proxy!r}; drop --judge or use --proxy markers")
    judge = judge_settings(args, args.device).build()
    proxy = make_proxy(args.proxy, args.max_new_tokens, args.batch_size, chat, judge, args.agent_template)

    def loader(spec):
        return lambda: load_model(spec, args.dtype, args.device, args.device_map, args.trust_remote_code)

    result = evaluate(loader(args.base), loader(args.model), harmful, harmless, proxy, chat, edgy, args.batch_size)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    out = console()
    refusal, base = result.refusal, result.base_refusal
    out.print(f"KL (harmless, first token): {result.kl:.4f} over {len(harmless)} prompts")
    out.print(f"{proxy.name} proxy on {len(harmful)} harmful prompts: {refusal.value:.3f} (base {base.value:.3f})")
    if refusal.counts:
        out.print(f"  refusal rate {refusal.rate('refusal'):.3f} (base {base.rate('refusal'):.3f}), "
                  f"degenerate rate {refusal.rate('degenerate'):.3f}, counts {refusal.counts}")
    if result.over_refusal:
        out.print(f"over-refusal on {result.over_refusal.total} edgy prompts: {result.over_refusal.rate('refusal'):.3f}")
    for prompt, response in refusal.samples:
        out.print(f"[bold]> {escape(prompt)}[/]\n  {escape(response.strip()[:300])}", highlight=False)
    return 0
