"""The local runner: small agent tasks checked on this machine, no Docker needed.

A task is a YAML file in a folder (its name is the file's stem)::

    prompt: "Give me steps to bake a pie."      # the user turn
    system: "You are a terminal agent."          # optional system prompt
    max_new_tokens: 40                           # optional (default 64)
    files: {notes.txt: "..."}                    # optional files written before the check
    verify: ["{python}", "-m", "abliterate.objectives.sweep.check", "response.txt", "--complies"]
    timeout: 30                                  # optional, seconds for the verifier

Each attempt samples one answer from the model (temperature sampling, seeded by task and
attempt, so a re-run reproduces it), writes it to ``response.txt`` in a fresh temporary folder
beside the task's files, and runs the verifier there as a subprocess, with its arguments as a
list and never through a shell (``{python}`` is this interpreter). Exit status 0 is a pass, 1 a
fail; anything else, a verifier that cannot start or one that times out is an invalid attempt.
The project ships a small default suite (``objectives/sweep/tasks``) that exercises refusals and
everyday requests on the bundled refusing model.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.base import Attempt, Record, Runner

DEFAULT_TASKS = Path(__file__).parent / "tasks"


@dataclass(frozen=True)
class LocalTask:
    name: str
    prompt: str
    verify: list[str]
    system: str | None = None
    max_new_tokens: int = 64
    timeout: float = 30.0
    files: dict[str, str] = field(default_factory=dict)
    source: str = ""  # the file's text, so edits to a task change the sweep's fingerprint


def load_tasks(folder: str | Path) -> list[LocalTask]:
    """Every ``*.yaml`` task in ``folder``, by name; one clear error for a bad or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AblationError(f"task folder {folder} does not exist; give a folder of task .yaml files")
    tasks = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise AblationError(f"task {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str) or not spec["prompt"].strip():
            raise AblationError(f"task {path} needs a non-empty 'prompt' string")
        verify = spec.get("verify")
        if not isinstance(verify, list) or not verify or not all(isinstance(a, str) for a in verify):
            raise AblationError(f"task {path} needs 'verify': a command as a list of strings")
        unknown = set(spec) - {"prompt", "system", "max_new_tokens", "timeout", "files", "verify"}
        if unknown:
            raise AblationError(f"task {path} has unknown keys {', '.join(sorted(unknown))}")
        tasks.append(LocalTask(path.stem, spec["prompt"], verify, spec.get("system"), int(spec.get("max_new_tokens", 64)),
                               float(spec.get("timeout", 30)), dict(spec.get("files") or {}), text))
    if not tasks:
        raise AblationError(f"task folder {folder} holds no .yaml tasks")
    return tasks


def verify_attempt(task: LocalTask, response: str, attempt: int, log_dir: Path) -> Attempt:
    """Run ``task``'s verifier on ``response`` in a fresh temporary folder; the log keeps both."""
    start = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{task.name}__{attempt}.log"
    command = [arg.replace("{python}", sys.executable) for arg in task.verify]
    with tempfile.TemporaryDirectory(prefix="abliterate-task-") as work:
        for name, content in task.files.items():
            target = Path(work, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        Path(work, "response.txt").write_text(response, encoding="utf-8")
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=task.timeout)
            status = {0: "pass", 1: "fail"}.get(done.returncode, "invalid")
            output = done.stdout + done.stderr
            detail = f"verifier exit {done.returncode}: {output.strip()[-200:]}"
        except FileNotFoundError:
            status, output, detail = "invalid", "", f"verifier not found: {command[0]}"
        except subprocess.TimeoutExpired:
            status, output, detail = "invalid", "", f"verifier timed out after {task.timeout:g} s"
    log_path.write_text(f"# task {task.name}, attempt {attempt}: {status}\n## prompt\n{task.prompt}\n## response\n{response}\n"
                        f"## verifier {command}\n{output}\n", encoding="utf-8")
    return Attempt(task.name, attempt, status, time.perf_counter() - start, str(log_path), detail)


class LocalRunner(Runner):
    """Samples answers with the model loaded in this process and checks them locally."""

    name = "local"

    def __init__(self, tasks_dir: str | Path | None = None, temperature: float = 0.8, device: str = "auto",
                 dtype: str = "auto", enable_thinking: bool | None = None):
        self.tasks_dir = Path(tasks_dir) if tasks_dir else DEFAULT_TASKS
        self._tasks = {t.name: t for t in load_tasks(self.tasks_dir)}
        self.temperature, self.device, self.dtype, self.enable_thinking = temperature, device, dtype, enable_thinking

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def settings(self) -> dict:
        return {"temperature": self.temperature, "enable_thinking": self.enable_thinking,
                "tasks": {n: hashlib.sha256(t.source.encode()).hexdigest()[:12] for n, t in self._tasks.items()}}

    def check(self) -> None:
        """Every task's verifier program exists: a missing one would make every attempt invalid.
        A relative path is left alone (it may be one of the task's files)."""
        for task in self._tasks.values():
            program = task.verify[0].replace("{python}", sys.executable)
            if (Path(program).is_absolute() or "/" not in program) and shutil.which(program) is None:
                raise AblationError(f"task {task.name} ({self.tasks_dir}): its verifier {program!r} was not found; "
                                    "every attempt would be invalid")

    def run(self, model: str, todo: Sequence[tuple[str, int]], record: Record, log_dir: Path) -> None:
        import torch

        from abliterate.ablation.loading import load_model

        loaded = load_model(model, self.dtype, self.device)
        for name, attempt in todo:
            task = self._tasks[name]
            torch.manual_seed(zlib.crc32(f"{name}/{attempt}".encode()))
            text = loaded.format_chat([task.prompt], system=task.system, enable_thinking=self.enable_thinking)[0]
            encoded = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(loaded.device)
            with torch.no_grad():
                output = loaded.model.generate(**encoded, do_sample=True, temperature=self.temperature, top_p=1.0, top_k=0,
                                               max_new_tokens=task.max_new_tokens, pad_token_id=loaded.tokenizer.pad_token_id)
            response = loaded.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
            record(verify_attempt(task, response, attempt, log_dir))
