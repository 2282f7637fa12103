"""The reproduction record of an exported checkpoint: everything needed to re-bake its weights
bit for bit without the study's database.

The record (``reproduce.json`` in the checkpoint) holds the trial's params, the study's settings,
the direction method with the sha256 of the directions used (the directions themselves travel
beside it, in ``directions/``), every prompt source with the sha256 of its prompts, the base
model and the dtype and device it was edited in, the package versions, the sampler seed, the
figures measured for the trial, its promotion when there is one, and the sha256 of every weight
file written. The functions here are pure, except :func:`package_versions` and
:func:`read_reproduction`.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from abliterate.ablation.candidate import IMPLIED, candidate_from_params
from abliterate.ablation.errors import AblationError
from abliterate.ablation.registry import interventions, methods

FORMAT = "abliterate-reproduction/1"
REPRO_FILE = "reproduce.json"
# In a sub-folder: servers such as vLLM load every *.safetensors at the top of a checkpoint.
DIRECTIONS_FILE = "directions/directions.safetensors"
PACKAGES = ("abliterate", "torch", "transformers", "safetensors", "tokenizers", "accelerate", "optuna")
REQUIRED = ("format", "study", "base", "params", "directions", "prompts", "weights", "card")


def tensor_sha256(tensor) -> str:
    """sha256 of a tensor's raw bytes, contiguous and on the CPU (dtype and shape are recorded apart)."""
    import torch

    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def prompts_sha256(prompts: list[str]) -> str:
    """sha256 of a prompt list written as compact UTF-8 JSON (prompts may hold newlines)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def package_versions() -> dict[str, str | None]:
    """Python and the packages whose versions decide the exported bits (None: not installed)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def edit_summary(params: dict, num_layers: int, layers_touched) -> dict:
    """The edit a trial's params describe, in layers (what the model card shows)."""
    candidate = candidate_from_params(params, num_layers)
    profile = candidate.profile
    return {
        "intervention": candidate.intervention,
        "method": candidate.method,
        "scope": candidate.scope,
        "direction_layer": candidate.direction_index if candidate.scope == "global" else None,
        "norm_preserving": candidate.norm_preserving,
        "first_layer": profile.first_layer,
        "last_layer": num_layers - 1 if profile.last_layer is None else profile.last_layer,
        "kernels": {group: {"shape": k.shape, "peak": k.peak, "peak_weight": k.peak_weight, "floor_weight": k.floor_weight,
                            "falloff": k.falloff} for group, k in sorted(profile.kernels.items())},
        "layers_touched": sorted(int(layer) for layer in layers_touched),
        "num_layers": num_layers,
        **methods.get(candidate.method).summary(candidate),
        **interventions.get(candidate.intervention).summary(candidate),
        **({"calibration_percentile": candidate.calibration} if candidate.calibration else {}),
    }


def reproduction(*, study: str, trial: int, config: dict, params: dict, edit: dict, directions: dict, prompts: list[dict],
                 figures: dict, promotion: dict | None, base: dict, packages: dict, weights: dict) -> dict:
    """The record as written to ``reproduce.json`` (key order is the reading order)."""
    return {
        "format": FORMAT,
        "abliterate": packages.get("abliterate"),
        "study": {"name": study, "trial": trial, "seed": config.get("seed"), "config": config},
        "base": base,
        "params": params,
        "edit": edit,
        "directions": directions,
        "prompts": prompts,
        "figures": figures,
        "promotion": promotion,
        "packages": packages,
        "weights": weights,
    }


def to_text(record: dict) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


def parse_reproduction(text: str, where: str) -> dict:
    """The record in ``text``; a one-line :class:`AblationError` when it is not one this version reads."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise AblationError(f"{where} is not JSON ({error.msg} at line {error.lineno}); pass the reproduce.json of an exported checkpoint") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise AblationError(f"{where} is not an abliterate reproduction record (format {found!r}, expected {FORMAT!r}); "
                            f"pass the {REPRO_FILE} of an exported checkpoint")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise AblationError(f"{where} lacks {', '.join(missing)}; it is damaged, export the trial again from its study")
    _check_edit(record, where)
    return record


def _check_edit(record: dict, where: str) -> None:
    """A one-line error when the record's params do not describe an edit its directions can make."""
    params, directions = record["params"], record["directions"]
    damaged = "it is damaged, export the trial again from its study"
    if not isinstance(params, dict) or not isinstance(directions, dict) or not directions.get("shape"):
        raise AblationError(f"{where} holds params or directions unlike an export's; {damaged}")
    method, intervention = params.get("method"), params.get("intervention", IMPLIED["intervention"])
    if method not in methods or intervention not in interventions:
        unknown = f"direction method {method!r}" if method not in methods else f"intervention {intervention!r}"
        raise AblationError(f"{where} names an unknown {unknown} (this version knows methods {', '.join(methods.names())}; "
                            f"interventions {', '.join(interventions.names())}); rebuild it with the abliterate version it records "
                            f"({record.get('abliterate')}), or export the trial again from its study")
    if method != directions.get("method"):
        raise AblationError(f"{where} takes the {method!r} directions in its params but records {directions.get('method')!r} ones; {damaged}")
    try:
        candidate_from_params(params, directions["shape"][0])
    except (KeyError, TypeError, ValueError) as error:
        raise AblationError(f"{where} holds params that describe no edit ({type(error).__name__}: {error}); {damaged}") from None


def check_fits(record: dict, model, spec: str) -> None:
    """A one-line error when ``model`` (loaded from ``spec``) is not shaped like the base model the
    record's directions were taken from (a bake would fail on mismatched matrices)."""
    text = model.config.get_text_config()
    recorded = record["directions"]["shape"]
    found = [text.num_hidden_layers, text.hidden_size]
    if [recorded[0], recorded[-1]] != found:
        raise AblationError(f"{spec} is not the record's base model: its directions are {recorded[0]} layers x {recorded[-1]} wide, "
                            f"{spec} has {found[0]} layers x {found[1]}; pass the base model it was exported from "
                            f"({record['base'].get('hub_id') or record['base'].get('model')})")


def read_reproduction(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise AblationError(f"reproduction file {path} does not exist; pass the {REPRO_FILE} of an exported checkpoint")
    return parse_reproduction(path.read_text(encoding="utf-8"), str(path))


def differing_files(recorded: dict[str, str], rebuilt: dict[str, str]) -> list[str]:
    """Weight files whose sha256 differs between the record and a rebuild, or that only one has."""
    return sorted(name for name in set(recorded) | set(rebuilt) if recorded.get(name) != rebuilt.get(name))
