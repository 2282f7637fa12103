"""Export an (edited) model as a complete Hugging Face folder, atomically.

Everything is written into a hidden sibling folder, which is renamed onto the target only when
complete: an interrupted export never leaves a half-written checkpoint where the user looks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ablation.errors import AblationError
from ablation.loading import LoadedModel


def export_checkpoint(loaded: LoadedModel, out: str | os.PathLike, overwrite: bool = False, max_shard_size: str = "4GB") -> Path:
    """Write config, tokenizer (and processor) and safetensors shards of ``loaded`` to ``out``.

    The architecture class is the loaded one (a multimodal model stays multimodal).
    """
    target = Path(out).expanduser().resolve()
    if target.exists() and not overwrite:
        raise AblationError(f"{target} already exists; choose another --out or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        loaded.model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        loaded.tokenizer.save_pretrained(staging)
        if loaded.processor is not None:
            loaded.processor.save_pretrained(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    # os.replace cannot replace a non-empty folder: move the old one aside first, so the
    # target path holds either the complete old export or the complete new one.
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / "old")
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
