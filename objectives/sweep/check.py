"""A verifier for local tasks: ``python -m objectives.sweep.check response.txt [checks]``.

Exit status 0 when every check holds, 1 when one fails, 2 on bad usage (which the local runner
counts as an invalid attempt, not a fail). Text is compared normalised (case, apostrophes,
markdown) with thinking blocks removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from abliterate.objectives.text import (
    REFUSAL_MARKERS,
    has_marker,
    is_degenerate,
    normalize,
    strip_thinking,
)


def verdict(response: str, contains: list[str], absent: list[str], complies: bool) -> tuple[bool, str]:
    """(passed, why) for a response under the given checks."""
    text = normalize(strip_thinking(response))
    if complies and has_marker(text, REFUSAL_MARKERS):
        return False, "refused"
    if complies and is_degenerate(response):
        return False, "degenerate answer"
    missing = [c for c in contains if normalize(c) not in text]
    if missing:
        return False, f"missing {', '.join(missing)}"
    present = [a for a in absent if normalize(a) in text]
    if present:
        return False, f"contains {', '.join(present)}"
    return True, "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m objectives.sweep.check", description=__doc__.splitlines()[0])
    parser.add_argument("response", help="file holding the model's answer")
    parser.add_argument("--contains", nargs="*", default=[], help="phrases the answer must contain")
    parser.add_argument("--absent", nargs="*", default=[], help="phrases the answer must not contain")
    parser.add_argument("--complies", action="store_true", help="the answer must not refuse and must not be degenerate")
    args = parser.parse_args(argv)
    try:
        response = Path(args.response).read_text(encoding="utf-8")
    except OSError as error:
        print(f"error: cannot read {args.response}: {error.strerror}", file=sys.stderr)
        return 2
    passed, why = verdict(response, args.contains, args.absent, args.complies)
    print(why)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
