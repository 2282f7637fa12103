"""Checkpoints that explain and reproduce themselves.

:func:`export_trial` re-bakes a finished trial from its params and the study's cached directions
and writes the Hugging Face folder with its model card (``README.md``), its reproduction record
(``reproduce.json``) and the directions it used. :func:`rebuild` writes the same folder from that
record and the base model alone, without the study's database, and refuses (writing nothing)
when the weights it baked are not bit for bit the recorded ones. :func:`check_hub` and
:func:`push` put a checkpoint on the Hugging Face Hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from abliterate.ablation.errors import AblationError, first_line
from abliterate.search.card import CARD_FILE, card_header, front_matter, hub_id, model_card
from abliterate.search.reproduce import (
    DIRECTIONS_FILE,
    REPRO_FILE,
    check_fits,
    differing_files,
    edit_summary,
    package_versions,
    prompts_sha256,
    read_reproduction,
    reproduction,
    tensor_sha256,
    to_text,
)
from abliterate.search.settings import DEFAULTS
from abliterate.storage.records import Promotion, TrialRecord


def trial_figures(values, record: TrialRecord) -> dict:
    """What the study measured for a trial (its objective ``values`` and ``record``), as the card
    and the reproduction record show it."""
    return {"kl": record.kl if record.kl is not None else values[1] if values else None, "refusal": values[0] if values else None,
            "refusal_rate": record.refusal_rate, "degenerate_rate": record.degenerate_rate, "feasible": record.feasible}


def export_trial(storage_url: str | None, study_name: str, trial_number: int, out: str, device: str = "auto",
                 overwrite: bool = False, base_model_id: str | None = None, force: bool = False, dtype: str = "stored",
                 adapter_rank: int | None = None) -> Path:
    """Write trial ``trial_number`` of ``study_name`` to ``out`` with its card and record; a trial
    over the study's KL cap only with ``force``. The edit is baked into the base model loaded in
    ``dtype``: by default the one its checkpoint is stored in, whatever the study searched in (a
    bf16 base searched in fp32 on a CPU is exported in bf16, not at twice the size). With
    ``adapter_rank``: a LoRA adapter of at most that rank instead of the whole model."""
    from abliterate.search.kit import StudyKit
    from abliterate.storage.promotions import PromotionStore

    kit = StudyKit.open(storage_url, study_name, device, dtype=dtype, owner="export")
    trial = kit.finished_trial(trial_number)
    kl = TrialRecord.of(trial).kl
    if kl is not None and kl > kit.config.kl_cap and not force:
        raise AblationError(f"trial {trial_number} is infeasible: its KL {kl:.4g} is over the study's cap {kit.config.kl_cap:g}; "
                            "pick a trial from abliterate front, or pass --force to export it anyway")
    kit.payload()  # a study without directions is told before the model loads
    promotion = PromotionStore(kit.storage.engine, study_name).get(trial_number)
    return export_loaded(kit, trial, promotion, out, overwrite, base_model_id, adapter_rank)


def export_loaded(kit, trial, promotion: Promotion | None, out, overwrite: bool = False,
                  base_model_id: str | None = None, adapter_rank: int | None = None) -> Path:
    """Write ``trial`` (a finished Optuna trial of the study of ``kit``, a
    :class:`search.kit.StudyKit`) baked into the kit's model to ``out``, with its card and record;
    ``promotion`` is its promotion when it has one."""
    config, directions, loaded = kit.config, kit.payload(), kit.model
    prompts = prompt_records(config)
    card, base_config = base_files(config.model)

    def record_for(layers, weights: dict[str, str]) -> dict:
        from abliterate.ablation.resolve import used_tensors

        num_layers = kit.num_layers
        used = directions[trial.params["method"]]
        extra = {name: {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."), "sha256": tensor_sha256(tensor)}
                 for name, tensor in used_tensors(kit.candidate(trial.params), directions).items()
                 if name != trial.params["method"]}
        base = {"model": config.model, "hub_id": base_model_id or hub_id(config.model),
                "dtype": str(loaded.model.dtype).removeprefix("torch."), "device": loaded.device.type}
        record = reproduction(
            study=kit.name, trial=trial.number, config=json.loads(config.to_json()), params=dict(trial.params),
            edit=edit_summary(trial.params, num_layers, layers),
            directions={"method": trial.params["method"], "file": DIRECTIONS_FILE, "shape": list(used.shape),
                        "dtype": str(used.dtype).removeprefix("torch."), "sha256": tensor_sha256(used)}
                       | ({"extra": extra} if extra else {}),
            prompts=prompts, figures=trial_figures(trial.values, TrialRecord.of(trial)),
            promotion=None if promotion is None else {"status": str(promotion.status), "details": promotion.details},
            base=base, packages=package_versions(), weights=weights)
        return record | {"card": card_header(base["hub_id"], front_matter(card), base_config)}

    return write_checkpoint(loaded, directions, trial.params, out, overwrite, record_for, adapter_rank)


def restate_promotion(folder: str | Path, promotion: Promotion) -> None:
    """Put a promotion's new status and findings into an exported checkpoint's record and card
    (the weights are not touched); each file is replaced whole."""
    from abliterate.ablation.export import current_umask, published_modes

    folder = Path(folder)
    record = read_reproduction(folder / REPRO_FILE) | {"promotion": {"status": str(promotion.status), "details": promotion.details}}
    for name, text in ((REPRO_FILE, to_text(record)), (CARD_FILE, model_card(record["card"], record))):
        partial = folder / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.chmod(published_modes(current_umask())[1])
        partial.replace(folder / name)


def rebuild(path: str, model: str, out: str, device: str | None = None, overwrite: bool = False,
            log: Callable[[str], None] = print) -> Path:
    """The checkpoint a reproduction record describes, rebuilt from ``model`` bit for bit.

    The directions are read from beside the record; when they are not there, they are computed
    again from the recorded prompt sources (whose contents must not have changed). Either way
    their sha256 must be the recorded one, and so must every weight file's, or nothing is written.
    """
    from abliterate.ablation.loading import load_model

    record = read_reproduction(path)
    base = record["base"]
    loaded = load_model(model, base["dtype"], device or base["device"])
    check_fits(record, loaded.model, model)
    directions = recorded_directions(record, Path(path).expanduser().parent, loaded, log)

    def record_for(layers, weights: dict[str, str]) -> dict:
        wrong = differing_files(record["weights"], weights)
        if wrong:
            raise AblationError(
                f"the rebuilt weights differ from the recorded ones ({', '.join(wrong)}); rebuild from the same base model in "
                f"{base['dtype']} on {base['device']} (recorded packages: {_versions(record)}); nothing written")
        return record

    return write_checkpoint(loaded, directions, record["params"], out, overwrite, record_for,
                            (record.get("adapter") or {}).get("max_rank"))


def write_checkpoint(loaded, directions: dict, params: dict, out: str, overwrite: bool,
                     record_for: Callable[[tuple[int, ...], dict[str, str]], dict], adapter_rank: int | None = None) -> Path:
    """Bake ``params`` into ``loaded``, export it with the directions used, the record
    ``record_for(layers touched, weight sha256s)`` and its card, and restore the model. With
    ``adapter_rank``, the edit is written as a LoRA adapter of at most that rank instead
    (:mod:`ablation.adapter`), the model untouched, and the record says so under ``adapter``."""
    from safetensors.torch import save_file

    from abliterate.ablation import Baker
    from abliterate.ablation.candidate import candidate_from_params
    from abliterate.ablation.export import export_checkpoint, weight_hashes
    from abliterate.ablation.resolve import layers_of, resolve, used_tensors

    candidate = candidate_from_params(params, layers_of(directions))
    baker = Baker.for_model(loaded.model)
    edit = resolve(candidate, directions, baker.writers)
    adapter: dict = {}
    if adapter_rank is None:
        layers, write_adapter = baker.bake(edit).layers, None
    else:
        from abliterate.ablation.adapter import edit_factors, save_adapter

        factors = edit_factors(baker, edit, adapter_rank)
        layers = tuple(sorted({f.layer for f in factors}))

        def write_adapter(staging: Path) -> None:
            adapter.update(save_adapter(loaded.model, factors, staging) | {"max_rank": adapter_rank})

    def finish(staging: Path) -> None:
        weights = weight_hashes(staging)  # before anything else: only the model's own weight files
        (staging / DIRECTIONS_FILE).parent.mkdir(parents=True, exist_ok=True)
        save_file(used_tensors(candidate, directions), staging / DIRECTIONS_FILE)
        record = record_for(layers, weights) | ({"adapter": adapter} if adapter else {})
        (staging / REPRO_FILE).write_text(to_text(record), encoding="utf-8")
        (staging / CARD_FILE).write_text(model_card(record["card"], record), encoding="utf-8")

    try:
        return export_checkpoint(loaded, out, overwrite=overwrite, finish=finish, weights=write_adapter)
    finally:
        baker.restore()


def recorded_directions(record: dict, folder: Path, loaded, log: Callable[[str], None]) -> dict:
    """{name: tensor} as recorded (the method's directions, and what its intervention reads): from
    the file beside the record, or computed again (all but an amplification's compliance direction,
    which needs the study's refusal judge)."""
    from safetensors.torch import load_file

    wanted = record["directions"]
    method = wanted["method"]
    stored = folder / wanted["file"]
    if stored.is_file():
        directions = load_file(stored)
        if method not in directions:
            raise AblationError(f"{stored} holds no {method!r} directions; it does not belong to this record")
        where = str(stored)
    else:
        log(f"{stored} is missing: computing the {method} directions again from the recorded prompt sources")
        directions = _recompute(record, loaded)
        where = "the recomputed directions"
    found = tensor_sha256(directions[method])
    if found != wanted["sha256"]:
        raise AblationError(f"{where} differ from the recorded ones (sha256 {found[:12]} instead of {wanted['sha256'][:12]}); "
                            f"copy the checkpoint's {Path(wanted['file']).parent}/ folder beside the record, or compute on "
                            f"{record['base']['device']} in {record['base']['dtype']}")
    for name, entry in wanted.get("extra", {}).items():
        if name not in directions or tensor_sha256(directions[name]) != entry["sha256"]:
            raise AblationError(f"{where} lack the recorded {name!r} (or it differs); copy the checkpoint's "
                                f"{Path(wanted['file']).parent}/ folder beside the record")
    return {name: directions[name] for name in (method, *wanted.get("extra", {}))}


def _recompute(record: dict, loaded) -> dict:
    from dataclasses import replace

    from abliterate.ablation.candidate import IMPLIED
    from abliterate.ablation.registry import interventions
    from abliterate.objectives.payload import compute_payload
    from abliterate.objectives.prompts import load_prompts
    from abliterate.objectives.refusal import ChatFormat
    from abliterate.search.study import StudyConfig
    from abliterate.search.trial import capture_extraction

    config = StudyConfig.from_json(json.dumps(record["study"]["config"]))
    sets = {}
    for entry in record["prompts"]:
        if entry["purpose"] != "extraction":
            continue
        if entry["sha256"] is None:
            raise AblationError(f"prompt source {entry['source']!r} could not be read at export, so the directions cannot be "
                                f"computed again: copy the checkpoint's directions/ folder beside the record")
        prompts = load_prompts(entry["source"])
        if prompts_sha256(prompts) != entry["sha256"]:
            raise AblationError(f"prompt source {entry['source']!r} has changed since the export (its sha256 differs); "
                                f"the directions cannot be computed again: copy the checkpoint's directions/ folder beside the record")
        sets[entry["side"]] = prompts
    chat = ChatFormat(enable_thinking=config.enable_thinking)
    # The recorded intervention's tensors are computed again too, unless they need the study's
    # refusal judge (then the check of the recorded ones says what to copy).
    recorded = [intervention.name for intervention in interventions if intervention.needs and not intervention.needs_judge
                and set(intervention.needs) <= set(record["directions"].get("extra", {}))]
    space = replace(config.space, methods=(record["directions"]["method"],), interventions=tuple(recorded[:1]) or (IMPLIED["intervention"],))
    # A study of --batch-size auto records no size: the default's, and the digest check below
    # says so should the directions come out other than the worker's.
    batch_size = config.batch_size or DEFAULTS.batch_size
    residuals = capture_extraction(loaded, sets["harmful"], sets["harmless"], chat, batch_size)
    return compute_payload(loaded, sets["harmful"], sets["harmless"], residuals, space, chat=chat, batch_size=batch_size,
                           labels=config.categories(), sae=config.sae)


def prompt_records(config) -> list[dict]:
    """Every prompt source of the study with the sha256 and count of its prompts (None and the
    reason when a source cannot be read here)."""
    from abliterate.objectives.prompts import load_prompts

    records = []
    for side, specs in (("harmful", config.harmful), ("harmless", config.harmless)):
        for purpose, spec in specs.items():
            try:
                prompts = load_prompts(spec)
                records.append({"side": side, "purpose": purpose, "source": spec, "count": len(prompts), "sha256": prompts_sha256(prompts)})
            except AblationError as error:
                records.append({"side": side, "purpose": purpose, "source": spec, "count": None, "sha256": None, "error": str(error)})
    return records


def base_files(spec: str) -> tuple[str | None, dict]:
    """The base model's card text (None without one) and its config, from its folder or the hub cache."""
    card, config = _base_file(spec, "README.md"), _base_file(spec, "config.json")
    try:
        return card, json.loads(config) if config else {}
    except json.JSONDecodeError:
        return card, {}


def _base_file(spec: str, name: str) -> str | None:
    path = Path(spec).expanduser()
    folder = path.parent if path.is_file() else path
    if folder.is_dir():
        return (folder / name).read_text(encoding="utf-8", errors="replace") if (folder / name).is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec, name)).read_text(encoding="utf-8", errors="replace")
    except Exception:  # offline, gated or missing: the card goes without what the base's file would add
        return None


def _versions(record: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (record.get("packages") or {}).items() if k in ("torch", "transformers") and v)


def check_hub(repo: str) -> None:
    """Refuse early, in one line, when ``repo`` cannot be pushed to from here."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise AblationError(f"cannot push to {repo}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); "
                            "export without --push-to-hub and upload the folder where the hub is reachable (hf upload REPO DIR)")
    try:
        HfApi().whoami()
    except Exception as error:
        raise AblationError(f"cannot push to {repo}: the Hugging Face Hub did not answer or refused the token ({first_line(error)}); "
                            "check the network and `hf auth login`, or export without --push-to-hub") from None


def push(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the model repository ``repo`` (created private when missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=True, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="abliterate export")
    except Exception as error:
        raise AblationError(f"the checkpoint is in {folder} but pushing it to {repo} failed ({first_line(error)}); "
                            f"upload it later with: hf upload {repo} {folder}") from None
    return str(getattr(info, "commit_url", info))
