"""The ``abliterate`` command.

Every user error surfaces as one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ablation.directions import METHODS
from ablation.errors import AblationError
from storage.errors import StorageError

PROXIES = ("markers", "first-token", "agent")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (AblationError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abliterate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="list every residual writer the model has, per layer")
    _model_options(inspect)
    inspect.set_defaults(run=_inspect)

    directions = commands.add_parser("directions", help="capture residuals and compute refusal directions")
    _model_options(directions)
    directions.add_argument("--harmful", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--harmless", required=True, help="prompt source spec: file, pkg:, hf: or preset")
    directions.add_argument("--method", choices=METHODS, default="mean")
    directions.add_argument("--out", required=True, help="safetensors file for residual means and directions")
    directions.add_argument("--batch-size", type=int, default=16)
    directions.add_argument("--samples", action="store_true", help="also store every prompt's residuals")
    directions.set_defaults(run=_directions)

    evaluate = commands.add_parser("evaluate", help="score an edited model against its base: KL, refusals, samples")
    _model_options(evaluate)
    evaluate.add_argument("--base", required=True, help="the unedited model (hub id, folder or .gguf)")
    evaluate.add_argument("--harmful", default="demo-harmful", help="prompt source spec (default: demo-harmful)")
    evaluate.add_argument("--harmless", default="demo-harmless", help="prompt source spec (default: demo-harmless)")
    evaluate.add_argument("--edgy", default=None, help="benign-but-edgy prompt source for an over-refusal rate")
    evaluate.add_argument("--proxy", choices=PROXIES, default="markers")
    evaluate.add_argument("--max-new-tokens", type=int, default=48)
    evaluate.add_argument("--judge", default=None, help="module:attribute of a refusal judge (markers proxy)")
    evaluate.add_argument("--agent-template", default=None, help="text file with {task} (agent proxy)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="the main job on the embedded default")
    demo.set_defaults(run=_demo)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id, local folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--device-map", default=None, help="e.g. auto: spread one model over several GPUs")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-thinking", action="store_true", help="turn thinking off in the chat template (Qwen3/3.5)")


def _load(args):
    from ablation.loading import load_model

    return load_model(args.model, args.dtype, args.device, args.device_map, args.trust_remote_code)


def _inspect(args) -> int:
    from ablation.architectures import find_writers

    loaded = _load(args)
    print_writers(find_writers(loaded.model), title=f"residual writers of {args.model}")
    return 0


def console():
    """A rich console; piped output keeps one line per row so it can be grepped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 240)


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
    loaded = _load(args)
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
    from objectives.refusal import AgentProxy, ChatFormat, FirstTokenProxy, MarkerProxy, load_judge

    harmful, harmless = load_prompts(args.harmful), load_prompts(args.harmless)
    edgy = load_prompts(args.edgy) if args.edgy else None
    chat = ChatFormat(enable_thinking=False if args.no_thinking else None)
    if args.proxy == "markers":
        judge = load_judge(args.judge) if args.judge else None
        proxy = MarkerProxy(judge, args.max_new_tokens, args.batch_size, chat=chat)
    elif args.proxy == "first-token":
        proxy = FirstTokenProxy(args.max_new_tokens, args.batch_size, chat=chat)
    else:
        options = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, enable_thinking=chat.enable_thinking)
        proxy = AgentProxy.from_template_file(args.agent_template, **options) if args.agent_template else AgentProxy(**options)

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


def _demo(args) -> int:
    from search.demo import run_demo

    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
