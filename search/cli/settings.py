"""Where ``abliterate search`` takes its settings from, in order: flags, then ``ABLITERATE_*``
environment variables, then a study file (``--config study.toml``), then the defaults.

The study file holds everything a study needs, under the names of the flags (dashes or
underscores): ``model``, ``harmful``, ``harmless``, ``split``, ``trials``, ``kl-cap``, ``proxy``,
``sampler``, ``seed``, ... A ``[space]`` table holds the search space: ``preset``, ``methods``,
``interventions``, and the range of any parameter of :class:`search.space.SearchSpace` (e.g.
``peak_weight = [0.8, 1.5]``, ``cone_rank = [1, 3]``). Lists may stand where a flag takes a
comma-separated value. Relative paths in the file are read from the file's folder. An
environment variable is the flag's name in capitals (``ABLITERATE_MODEL``, ``ABLITERATE_KL_CAP``,
``ABLITERATE_METHODS=mean,cone``). A resumed study keeps what it stored, whatever these say.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from abliterate.ablation.errors import AblationError

ENV_PREFIX = "ABLITERATE_"
_NOT_SETTINGS = {"help", "config", "run", "argv"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def resolve(search: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """``args`` with every option not given as a flag taken from the environment or the study
    file; the file's ``[space]`` ranges land in ``args.space_ranges``. One-line errors."""
    explicit = _given(search, argv)
    actions = {a.dest: a for a in search._actions if a.option_strings and a.dest not in _NOT_SETTINGS}
    values, folder, where = {}, None, None
    args.space_ranges = {}
    if getattr(args, "config", None):
        values, folder, where = _read(args.config)
        space = values.pop("space", {})
        if not isinstance(space, dict):
            raise AblationError(f"{where}: space must be a table ([space]), got {type(space).__name__}")
        for key in ("preset", "methods", "interventions"):
            if key in space:
                values["space" if key == "preset" else key] = space.pop(key)
        args.space_ranges = space
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise AblationError(f"{where}: unknown setting {unknown[0]!r}; settings are {', '.join(sorted(actions))} "
                                "and a [space] table")
    for dest, action in actions.items():
        if dest in explicit:
            continue
        name = ENV_PREFIX + dest.upper()
        if name in os.environ:
            setattr(args, dest, _convert(action, os.environ[name], f"${name}"))
        elif dest in values:
            value = _convert(action, values[dest], f"{where}: {dest}")
            setattr(args, dest, _from_folder(dest, value, folder))
    return args


def _given(search: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options given on the command line: the same arguments parsed with no defaults."""
    saved = [(action, action.default, action.required) for action in search._actions]
    try:
        for action, _, _ in saved:
            action.default, action.required = argparse.SUPPRESS, False
        return set(vars(search.parse_args(argv)))
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required


def _read(path: str) -> tuple[dict, Path, str]:
    import tomllib

    file = Path(path).expanduser()
    if not file.is_file():
        raise AblationError(f"study file {file} does not exist; pass a TOML file to --config")
    try:
        values = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise AblationError(f"study file {file} is not valid TOML ({error}); fix the file") from None
    return {key.replace("-", "_"): value for key, value in values.items()}, file.resolve().parent, str(file)


def _convert(action: argparse.Action, value, where: str):
    """``value`` (text from the environment, or a TOML value) as the flag would have parsed it."""
    if action.nargs == 0:  # an on/off flag
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise AblationError(f"{where} must be true or false, got {value!r}")
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    text = str(value)
    try:
        converted = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise AblationError(f"{where}: {error}") from None
    if action.choices is not None and converted not in action.choices:
        raise AblationError(f"{where} is {converted!r}; use one of {', '.join(map(str, action.choices))}")
    return converted


def _from_folder(dest: str, value, folder: Path | None):
    """A local path written in the study file, as seen from the file's folder."""
    if folder is None or not isinstance(value, str):
        return value
    if dest in ("harmful", "harmless"):
        from abliterate.objectives.prompts import absolute_spec

        return absolute_spec(value, folder)
    if dest in ("model", "sae") and (folder / value).expanduser().exists():
        return str((folder / value).expanduser().resolve())
    return value
