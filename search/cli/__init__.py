"""abliterate: search for the edit that removes a model's refusals with the least damage.

Every user error surfaces as one line ``error: ...`` on stderr and exit status 2; a database
that cannot be reached (or is lost mid-run) gives exit status 3, which the launcher treats as
worth retrying after a pause. Commands live in one module per group (study, browse, demo,
checkpoint, model, promotion, judge, analysis) and import torch, transformers and the database
layers only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys

from abliterate.search.cli import analysis, browse, checkpoint, demo, judge, model, promotion, study
from abliterate.search.cli.common import Parser
from abliterate.search.launcher import DATABASE_UNREACHABLE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not sys.stderr.isatty():
        # Progress bars redraw with carriage returns: in a log they are noise and blank lines.
        # Set before transformers is imported (it reads the switch once); a user's value wins.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from abliterate.ablation.errors import AblationError
    from abliterate.storage.errors import DatabaseUnreachable, StorageError

    try:
        return args.run(args) or 0
    except DatabaseUnreachable as error:
        print(f"error: {error}", file=sys.stderr)
        return DATABASE_UNREACHABLE
    except (AblationError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="abliterate", description=__doc__.split("\n\n")[0],
                 epilog="Run 'abliterate COMMAND --help' for a command's options and their defaults.")
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    for group in (study, browse, demo, checkpoint, model, promotion, judge, analysis):
        group.register(commands)
    return top
