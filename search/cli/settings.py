"""Where ``abliterate search`` takes its settings (:class:`~abliterate.search.settings.SearchSettings`)
from, in order: flags, then, for deployment settings only, ``ABLITERATE_*`` environment
variables, then a study file (``--config study.toml``), then the defaults.

The study file holds everything a study needs, under the names of the flags (dashes or
underscores): ``model``, ``harmful``, ``harmless``, ``split``, ``trials``, ``kl-cap``, ``proxy``,
``sampler``, ``seed``, ... A ``[space]`` table holds the search space: ``preset``, ``methods``,
``interventions``, and the range of any parameter of :class:`search.space.SearchSpace` (e.g.
``peak_weight = [0.8, 1.5]``, ``cone_rank = [1, 3]``). Lists may stand where a flag takes a
comma-separated value. Relative paths in the file are read from the file's folder. A resumed
study keeps what it stored, whatever these say.

A variable that names a search setting (``ABLITERATE_KL_CAP``) changes nothing: a line on
stderr says it is ignored and which flag to use instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.search.settings import DEFAULTS, DEPLOYMENT, SETTINGS, SearchSettings, flag, variable
from abliterate.search.values import AUTO_BATCH

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Resolved:
    """The settings of one ``abliterate search``, and where each that was not left to its
    default came from (``--kl-cap``, ``$ABLITERATE_GRACE`` or the study file's path)."""

    settings: SearchSettings
    space_ranges: dict[str, list] = field(default_factory=dict)  # the study file's [space] ranges
    sources: dict[str, str] = field(default_factory=dict)
    study_file: str | None = None

    def origins(self) -> list[str]:
        """One line per value that differs from the default, saying where it came from, in the
        order of ``--help``."""
        lines = []
        for name in SETTINGS:
            value, source = getattr(self.settings, name), self.sources.get(name)
            if source is None or value == getattr(DEFAULTS, name):
                continue
            if name == "storage":
                from abliterate.storage.urls import redacted

                value = redacted(value)
            if name == "batch_size" and value == AUTO_BATCH:
                value = "auto"
            lines.append(f"  {flag(name)[2:]} = {value} (from {source})")
        lines += [f"  [space] {key} = {value} (from {self.study_file})" for key, value in self.space_ranges.items()]
        return lines


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ,
            warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Resolved:
    """The settings that ``args`` (the flags given: the parser has no defaults, see
    :func:`abliterate.search.settings.add_flags`), the environment and ``args.config`` give;
    ``warn`` hears one line per variable of a search setting that is ignored. One-line errors."""
    given = {name: value for name, value in vars(args).items() if name in SETTINGS}
    values, sources, ranges, where = dict(given), {name: flag(name) for name in given}, {}, None
    if getattr(args, "config", None):
        found, folder, where = _read(args.config)
        space = found.pop("space", {})
        if not isinstance(space, dict):
            raise AblationError(f"{where}: space must be a table ([space]), got {type(space).__name__}")
        for key in ("preset", "methods", "interventions"):
            if key in space:
                found["space" if key == "preset" else key] = space.pop(key)
        unknown = sorted(set(found) - set(SETTINGS))
        if unknown:
            raise AblationError(f"{where}: unknown setting {unknown[0]!r}; settings are {', '.join(sorted(SETTINGS))} "
                                "and a [space] table")
        for name, value in found.items():
            if name not in given:
                values[name], sources[name] = _from_folder(name, _convert(name, value, f"{where}: {name}"), folder), where
        ranges = space
    for name in SETTINGS:
        if variable(name) not in environ:
            continue
        text = environ[variable(name)]
        if name not in DEPLOYMENT:
            if not isinstance(SETTINGS[name].default, bool):
                advice = f"use {flag(name)} {shlex.quote(text)}"
            else:
                advice = f"use {flag(name)}" if text.strip().lower() in _TRUE else f"{flag(name)} is off unless given"
            warn(f"warning: ${variable(name)} is ignored: a study's settings come from flags or --config, only deployment "
                 f"settings from the environment; {advice}")
        elif name not in given:
            values[name], sources[name] = _convert(name, text, f"${variable(name)}"), f"${variable(name)}"
    return Resolved(SearchSettings(**values), ranges, sources, where)


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


def _convert(name: str, value, where: str):
    """``value`` (text from the environment, or a TOML value) as setting ``name``'s flag would have parsed it."""
    setting = SETTINGS[name]
    if isinstance(setting.default, bool):  # an on/off switch
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise AblationError(f"{where} must be true or false, got {value!r}")
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    text, parse, choices = str(value), setting.metadata["type"], setting.metadata["choices"]
    try:
        converted = parse(text) if parse else text
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise AblationError(f"{where}: {error}") from None
    if choices is not None and converted not in choices:
        raise AblationError(f"{where} is {converted!r}; use one of {', '.join(map(str, choices))}")
    return converted


def _from_folder(name: str, value, folder: Path):
    """A local path written in the study file, as seen from the file's folder."""
    if not isinstance(value, str):
        return value
    if name in ("harmful", "harmless"):
        from abliterate.objectives.prompts import absolute_spec

        return absolute_spec(value, folder)
    if name in ("model", "sae") and (folder / value).expanduser().exists():
        return str((folder / value).expanduser().resolve())
    return value
