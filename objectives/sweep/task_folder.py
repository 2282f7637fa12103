"""Terminal tasks in the terminal-bench 2 / Harbor layout, read and checked before anything runs.

A task is a folder::

    instruction.md          what the agent is told
    task.toml               [agent] / [verifier] timeout_sec, [environment] build_timeout_sec
    environment/Dockerfile  the machine the agent works in (its folder is the build context)
    tests/test.sh           executable; writes 1 (pass) or 0 (fail) to /logs/verifier/reward.txt
    solution/solve.sh       the reference solution (optional for a user's task; every shipped one has it)

The shipped suite (``objectives/sweep/terminal``) builds FROM :data:`BASE_IMAGE`, which
``.ci/docker`` makes locally from Debian's packages: no registry is reachable here.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from abliterate.ablation.errors import AblationError

BASE_IMAGE = "abliterate-base:bookworm"
REQUIRED = ("instruction.md", "task.toml", "environment/Dockerfile", "tests/test.sh")


@dataclass(frozen=True)
class TerminalTask:
    """One task folder, checked: every required file present, test.sh executable, timeouts positive."""

    name: str
    folder: Path
    instruction: str
    agent_seconds: float
    verifier_seconds: float
    build_seconds: float
    tags: tuple[str, ...] = ()

    @classmethod
    def load(cls, folder: Path) -> TerminalTask:
        folder = Path(folder)
        missing = [part for part in REQUIRED if not (folder / part).is_file()]
        if missing:
            raise AblationError(f"task folder {folder} lacks {', '.join(missing)}; a task needs "
                                f"{', '.join(REQUIRED)} (the terminal-bench 2 layout)")
        if not os.access(folder / "tests" / "test.sh", os.X_OK):
            raise AblationError(f"{folder / 'tests' / 'test.sh'} is not executable; run chmod +x on it")
        try:
            config = tomllib.loads((folder / "task.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise AblationError(f"{folder / 'task.toml'} is not valid TOML ({error}); fix that line") from None
        seconds = {}
        for section, default in (("agent", 600.0), ("verifier", 120.0), ("environment", 600.0)):
            key = "build_timeout_sec" if section == "environment" else "timeout_sec"
            value = config.get(section, {}).get(key, default)
            if not isinstance(value, int | float) or value <= 0:
                raise AblationError(f"{folder / 'task.toml'}: [{section}] {key} must be a positive number of seconds, "
                                    f"got {value!r}")
            seconds[section] = float(value)
        tags = tuple(config.get("metadata", {}).get("tags", ()))
        return cls(folder.name, folder, (folder / "instruction.md").read_text(encoding="utf-8").strip(),
                   seconds["agent"], seconds["verifier"], seconds["environment"], tags)

    @property
    def has_solution(self) -> bool:
        return (self.folder / "solution" / "solve.sh").is_file()

    def base_image(self) -> str:
        """The image the Dockerfile's first FROM names (a build stage's alias is not followed)."""
        for line in (self.folder / "environment" / "Dockerfile").read_text(encoding="utf-8").splitlines():
            words = line.split()
            if words and words[0].upper() == "FROM":
                image = [w for w in words[1:] if not w.startswith("--")]
                if image:
                    return image[0]
        raise AblationError(f"{self.folder / 'environment' / 'Dockerfile'} has no FROM line; start it with FROM {BASE_IMAGE}")

    def environment_digest(self) -> str:
        """A hash of every file of the build context: an unchanged environment reuses its image."""
        digest = hashlib.sha256()
        context = self.folder / "environment"
        for path in sorted(p for p in context.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:12]


def load_tasks(folder: Path) -> list[TerminalTask]:
    """``folder`` is one task, or a folder of tasks (every subfolder with a task.toml), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AblationError(f"no task folder at {folder}; give a folder in the terminal-bench 2 layout")
    if (folder / "task.toml").exists():
        return [TerminalTask.load(folder)]
    tasks = [TerminalTask.load(sub) for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")]
    if not tasks:
        raise AblationError(f"{folder} holds no task folders; each needs {', '.join(REQUIRED)}")
    return tasks


def shipped_tasks() -> list[TerminalTask]:
    """The suite shipped with the package: ordinary operations work a refusing model tends to
    decline (tag ``declinable``) beside plainly neutral tasks (tag ``neutral``)."""
    return load_tasks(Path(str(resources.files("abliterate.objectives.sweep") / "terminal")))
