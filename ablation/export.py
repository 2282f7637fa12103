"""Export an (edited) model as a complete Hugging Face folder, atomically.

Everything is written into a hidden sibling folder, which is renamed onto the target only when
complete: an interrupted export never leaves a half-written checkpoint where the user looks.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ablation.errors import AblationError
from ablation.loading import LoadedModel


def export_checkpoint(loaded: LoadedModel, out: str | os.PathLike, overwrite: bool = False, max_shard_size: str = "4GB",
                      log: Callable[[str], None] | None = None) -> Path:
    """Write config, tokenizer (and processor) and safetensors shards of ``loaded`` to ``out``.

    The architecture class is the loaded one (a multimodal model stays multimodal). Staging
    folders that a killed export of the same target left behind are removed first (and said so
    through ``log``, default stderr).
    """
    target = Path(out).expanduser().resolve()
    if target.exists() and not overwrite:
        raise AblationError(f"{target} already exists; choose another --out or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_staging(target):
        size = sum(f.stat().st_size for f in stale.rglob("*") if f.is_file())
        shutil.rmtree(stale, ignore_errors=True)
        (log or _stderr)(f"removed {stale.name} ({size / 2**20:.0f} MiB), left beside {target.name} by an export that was killed")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{_me()}-", dir=target.parent))
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


def stale_staging(target: Path) -> list[Path]:
    """Hidden staging folders beside ``target`` whose exporting process, on this machine, is dead.

    Their names carry the host and process id (``.NAME.partial-HOST-PID-XXXX``), so a live
    export of the same target, here or on another machine sharing the folder, is left alone.
    """
    host = socket.gethostname()
    found = []
    for kind in ("partial", "old"):
        for folder in target.parent.glob(f".{target.name}.{kind}-*"):
            match = re.fullmatch(rf"\.{re.escape(target.name)}\.{kind}-(.+)-(\d+)-[^-]+", folder.name)
            if match and match[1] == host and not _alive(int(match[2])):
                found.append(folder)
    return found


def _me() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    # os.replace cannot replace a non-empty folder: move the old one aside first, so the
    # target path holds either the complete old export or the complete new one.
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{_me()}-", dir=target.parent))
    os.replace(target, retired / "old")
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
