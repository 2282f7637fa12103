"""Reading one prompt file by its extension: the entries it holds, before cleaning.

``read_file(path, fragment, where)`` is the entry point, used for local files and for files inside
installed distributions (``objectives.prompts`` resolves the spec). ``where`` names the file in
errors; ``fragment`` is the ``#FIELD`` part of a spec. The formats are described in
``objectives.prompts``. Every problem is an ``AblationError`` with a one-line message.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from abliterate.ablation.errors import AblationError

STRUCTURED = (".json", ".yaml", ".yml", ".prompt")
EXTENSIONS = (".txt", ".jsonl", ".csv", *STRUCTURED)


def read_file(path: Path, fragment: str | None, where: str) -> list[str]:
    """The entries of one file, read according to its extension."""
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise AblationError(f"{where} has unknown extension {suffix or '(none)'!r}; use one of {', '.join(EXTENSIONS)}")
    text = _read_text(path, where)
    if suffix == ".txt":
        if fragment is not None:
            raise AblationError(f"{where} is plain text and has no fields; drop '#{fragment}'")
        return text.splitlines()
    if suffix == ".jsonl":
        return field_values(_jsonl_items(text, where), fragment, where, "line")
    if suffix == ".csv":
        return field_values(_csv_rows(text, where), fragment, where, "row")
    return _structured(_parse_document(text, suffix, where), fragment, where)


def _read_text(path: Path, where: str) -> str:
    if not path.is_file():
        raise AblationError(f"{where} does not exist; pass an existing file, a preset name, or a pkg:/hf: spec")
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AblationError(f"{where} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise AblationError(f"{where} cannot be read ({exc.strerror or exc}); check its permissions") from None


def _jsonl_items(text: str, where: str) -> list[tuple[int, object]]:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise AblationError(f"{where} has bad JSON on line {number} ({exc.msg}); write one JSON object or string per line") from None
    return items


def _csv_rows(text: str, where: str) -> list[tuple[int, object]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # Row numbers count the header as row 1, as a spreadsheet shows them.
        rows = [(number, row) for number, row in enumerate(reader, 2)]
    except csv.Error as exc:
        raise AblationError(f"{where} is not valid CSV ({exc}); save it as comma-separated text with a header row") from None
    if reader.fieldnames is None:
        raise AblationError(f"{where} has no header row; the first row must name the columns")
    # Columns beyond the header land under the key None; they have no name to pick.
    return [(number, {k: v for k, v in row.items() if k is not None}) for number, row in rows]


def _parse_document(text: str, suffix: str, where: str) -> object:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise AblationError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg}); fix the file or save it as .jsonl") from None
    try:
        import yaml  # installed with transformers; imported here so text/JSON sources never need it
    except ImportError:
        raise AblationError(f"{where} is YAML and needs pyyaml; run: pip install pyyaml") from None
    try:
        # The C loader, when built, reads the 520-seed AdvBench file several times faster.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise AblationError(f"{where} is not valid YAML{at}; fix the file") from None


def _structured(document: object, fragment: str | None, where: str) -> list[str]:
    """Entries of a parsed JSON/YAML document: a list, or a mapping holding the list."""
    key, field = None, fragment
    if fragment is not None and "/" in fragment:
        key, field = fragment.split("/", 1)
        field = field or None
    if isinstance(document, dict):
        items, key = _pick_list(document, key, where)
        where = f"{where} key {key!r}"
    elif isinstance(document, list):
        if key is not None:
            raise AblationError(f"{where} is a list, not a mapping; drop '{key}/' from '#{fragment}'")
        items = document
    else:
        raise AblationError(f"{where} holds a {type(document).__name__}, not a list of prompts; make it a list of strings or objects")
    return field_values(enumerate(items, 1), field, where, "item")


def _pick_list(document: dict, key: str | None, where: str) -> tuple[list, str]:
    """The list under ``key``, or, without a key, under the first key holding a usable list."""
    if key is not None:
        if not isinstance(document.get(key), list):
            lists = [k for k, v in document.items() if isinstance(v, list)] or ["(none)"]
            raise AblationError(f"{where} has no list under key {key!r}; keys holding lists: {', '.join(map(str, lists))}")
        return document[key], key
    for name, value in document.items():
        if isinstance(value, list) and value and all(isinstance(v, (str, dict)) for v in value):
            return value, name
    raise AblationError(f"{where} is a mapping with no list of prompts; keys: {', '.join(map(str, document)) or '(none)'}")


def field_values(items: Iterable[tuple[int, object]], field: str | None, where: str, unit: str) -> list[str]:
    """The prompt of each numbered item: a string as is, or a mapping's ``field``.

    A mapping with a single key needs no ``field``. Null or missing-cell values count as blank.
    """
    values = []
    for number, item in items:
        if isinstance(item, dict):
            item = _pick_field(item, field, where, f"{unit} {number}")
        if item is None:
            continue
        if not isinstance(item, str):
            raise AblationError(f"{where} {unit} {number} is {type(item).__name__}, not text; give prompts as strings")
        values.append(item)
    return values


def _pick_field(item: dict, field: str | None, where: str, at: str) -> object:
    names = ", ".join(map(repr, item)) or "(none)"
    if field is None:
        if len(item) == 1:
            return next(iter(item.values()))
        raise AblationError(f"{where} has several fields; name the prompt field with #FIELD, one of {names}")
    if field not in item:
        raise AblationError(f"{where} {at} has no field {field!r}; available: {names}")
    return item[field]
