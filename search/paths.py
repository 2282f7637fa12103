"""Folders named after studies. A study's name is any text whoever created the study chose (a
shared database holds other people's studies), so it never becomes a path as it is."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
KEPT = 100  # longest name used as it is
SHOWN = 64  # characters of a changed name kept in front of its hash


def folder_name(name: str) -> str:
    """A folder name for study ``name``: the name itself when it is 1 to 100 letters, digits,
    ``.``, ``_`` or ``-`` and does not start with a dot; otherwise its first 64 characters with
    every other character (and a leading dot) as ``_``, then ``+`` and 16 hex digits of its
    SHA-256. Never empty, ``.``, ``..`` or holding a separator; two names never share a folder (a
    name kept as it is has no ``+``, and changed names differ in their hash)."""
    if not UNSAFE.search(name) and not name.startswith(".") and 0 < len(name) <= KEPT:
        return name
    shown = UNSAFE.sub("_", name[:SHOWN])
    if shown.startswith("."):
        shown = "_" + shown[1:]
    return f"{shown}+{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def study_folder(root: str | Path, name: str) -> Path:
    """``root``'s folder for study ``name`` (see :func:`folder_name`), always directly under it."""
    root = Path(root)
    folder = root / folder_name(name)
    if folder.parent != root or folder.name != folder_name(name):  # what folder_name promises, kept true
        raise ValueError(f"study name {name!r} maps to {folder}, outside {root}")
    return folder
