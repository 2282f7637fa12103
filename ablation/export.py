"""Export an (edited) model as a complete Hugging Face folder, atomically and readable by others.

Everything is written into a hidden sibling folder, which is renamed onto the target only when
complete: an interrupted export never leaves a half-written checkpoint where the user looks.
The staging folder is private while it is written (``mkdtemp`` makes it 0700); before it is put
in place every folder and file gets the modes an ordinary ``mkdir``/``open`` would give under
the user's umask (0755/0644 under the usual 022), so a model server running as another user
(vLLM or SGLang in a container, a shared GPU box) can read it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from abliterate.ablation.errors import AblationError, write_failure

if TYPE_CHECKING:  # the target checks run before torch is imported
    from abliterate.ablation.loading import LoadedModel

WEIGHTS_SUFFIX = ".safetensors"


def published_modes(umask: int) -> tuple[int, int]:
    """(folder mode, file mode) a checkpoint gets under ``umask``: 0o777 and 0o666 less the umask."""
    return 0o777 & ~umask, 0o666 & ~umask


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and putting it back at once
    (a moment in which another thread's new files would get 022)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def publish(folder: Path, umask: int | None = None) -> None:
    """Give ``folder`` and everything under it the modes of :func:`published_modes`."""
    folder_mode, file_mode = published_modes(current_umask() if umask is None else umask)
    for root, _folders, files in os.walk(folder):
        os.chmod(root, folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every safetensors weight file at the top of ``folder`` (what a server loads), by name."""
    folder = Path(folder)
    return {path.name: file_sha256(path) for path in sorted(folder.glob(f"*{WEIGHTS_SUFFIX}"))}


def export_checkpoint(loaded: LoadedModel, out: str | os.PathLike, overwrite: bool = False, max_shard_size: str = "4GB",
                      finish: Callable[[Path], None] | None = None, log: Callable[[str], None] | None = None,
                      weights: Callable[[Path], None] | None = None) -> Path:
    """Write config, tokenizer (and processor) and safetensors shards of ``loaded`` to ``out``.

    The architecture class is the loaded one (a multimodal model stays multimodal).
    ``weights(staging)``, when given, writes the folder's weights instead of the model's own
    (an adapter: :func:`ablation.adapter.save_adapter`); the tokenizer is written either way.
    ``finish(staging)``, when given, runs once the model files are in the staging folder and
    may add files (a model card) or raise to abandon the export: then nothing is written, and
    neither when the disk fills (a one-line error). Staging folders that killed exports, of any
    target, left in the target's folder are removed first (and said so through ``log``, default
    stderr).
    """
    target = check_target(out, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in stale_staging(target.parent):
            size = sum(f.stat().st_size for f in stale.rglob("*") if f.is_file())
            shutil.rmtree(stale, ignore_errors=True)
            (log or _stderr)(f"removed {stale.name} ({size / 2**20:.0f} MiB), left in {target.parent} by an export that was killed")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{_me()}-", dir=target.parent))
    except OSError as error:
        raise _unwritable(target, error) from None
    try:
        if weights is not None:
            weights(staging)
        else:
            loaded.model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        _forget_last_call(loaded.tokenizer)
        loaded.tokenizer.save_pretrained(staging)
        if loaded.processor is not None:
            loaded.processor.save_pretrained(staging)
        if finish is not None:
            finish(staging)
        publish(staging)
        _swap_into_place(staging, target)
    except (OSError, SafetensorError) as error:  # a full disk, a quota, a folder gone read-only
        shutil.rmtree(staging, ignore_errors=True)
        raise _unwritable(target, error) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_target(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute target of an export to ``out``, or a one-line error, before any work: it
    exists (without ``overwrite``), or it cannot be made (a file stands where a folder must, a
    read-only or full file system). Writes nothing."""
    target = Path(out).expanduser().resolve()
    if target.exists() and not overwrite:
        raise AblationError(f"{target} already exists; choose another --out or pass --overwrite")
    check_writable(target, "the checkpoint")
    return target


def check_writable(path: Path, what: str) -> None:
    """A one-line error when ``path`` (and any missing folder above it) cannot be made: the
    nearest existing folder above it must take a new entry, which is tried and removed."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise AblationError(f"cannot write {what} to {path}: {folder} is a file, not a folder; choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".abliterate-probe-", dir=folder))
    except OSError as error:
        raise AblationError(f"cannot write {what} to {path}: {folder} is not writable ({error.strerror}); choose another --out") from None


def _unwritable(target: Path, error: Exception) -> AblationError:
    return AblationError(f"cannot write the checkpoint to {target} ({write_failure(error)}); nothing was written: "
                         "free some space or choose another --out")


def _forget_last_call(tokenizer) -> None:
    """Clear the padding and truncation a fast tokenizer keeps from its last batched call.

    The backend saves them into tokenizer.json, so a checkpoint exported after scoring (padded
    batches) would differ from one exported straight after loading; transformers sets them again
    on every call, as an unpadded call would clear them.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "no_padding"):
        backend.no_padding()
        backend.no_truncation()


def stale_staging(folder: Path) -> list[Path]:
    """Hidden staging folders in ``folder``, of any export target, whose exporting process on
    this machine is dead.

    Their names carry the host and process id (``.NAME.partial-HOST-PID-XXXX``), so a live
    export, here or on another machine sharing the folder, is left alone.
    """
    host = socket.gethostname()
    found = []
    for kind in ("partial", "old"):
        for staging in folder.glob(f".*.{kind}-*"):
            match = re.fullmatch(rf"\..+\.{kind}-(.+)-(\d+)-[^-]+", staging.name)
            if match and match[1] == host and not _alive(int(match[2])) and staging.is_dir():
                found.append(staging)
    return sorted(found)


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
