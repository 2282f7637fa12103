"""Where a model spec points, told without torch or transformers: a wrong path is one line at
once, not after the seconds those imports take."""

from __future__ import annotations

from pathlib import Path

from abliterate.ablation.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"


def local_model(spec: str) -> tuple[str, dict] | None:
    """(folder, the ``from_pretrained`` options a GGUF file needs) of a local model spec; None when
    ``spec`` names a hub model. A path that does not exist, a folder without ``config.json`` or a
    file that is not GGUF is a one-line error."""
    path = Path(spec).expanduser()
    if path.is_file():
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"{spec} is a file but not a GGUF model (no GGUF header); pass a model folder, a .gguf file or a hub id")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} has no config.json; pass a Hugging Face model folder, a .gguf file or a hub id")
        return str(path), {}
    if spec.startswith((".", "/", "~")) or not is_hub_id(spec):
        raise ModelLoadError(f"model path {spec} does not exist; pass a model folder, a .gguf file or a hub id like org/name")
    return None


def is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)
