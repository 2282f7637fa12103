"""The command runner: the user's own script, run once per task and attempt.

The template is split into arguments once (``shlex``), then the placeholders ``{model}``,
``{task}``, ``{attempt}``, ``{log_dir}`` and ``{endpoint}`` are substituted inside each argument;
the result runs without a shell, so a task named ``a; rm -rf ~`` stays one harmless argument.
The script prints a JSON verdict as its last line of output: ``{"status": "pass" | "fail" |
"invalid"}``, ``{"pass": true}`` or ``{"reward": 1}`` (reward 1 is a pass). A script that exits
non-zero without a verdict, prints no JSON or times out gives an invalid attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.base import Attempt, Record, Runner


def fill(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """Each argument with the ``{name}`` placeholders of ``values`` replaced; other braces are kept.

    Substitution happens after splitting and in one pass, so a value is never split, never
    re-scanned for placeholders and never seen by a shell.
    """
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return [pattern.sub(lambda m: values[m.group(1)], arg) for arg in template]


def parse_verdict(stdout: str) -> str | None:
    """pass / fail / invalid from the last non-empty output line, or None when it holds no verdict."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return None
    try:
        verdict = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    if not isinstance(verdict, dict):
        return None
    if verdict.get("status") in ("pass", "fail", "invalid"):
        return verdict["status"]
    if isinstance(verdict.get("pass"), bool):
        return "pass" if verdict["pass"] else "fail"
    if isinstance(verdict.get("reward"), (int, float)) and not isinstance(verdict["reward"], bool):
        return "pass" if verdict["reward"] == 1 else "fail"
    return None


def log_name(task: str, attempt: int) -> str:
    """A safe file name for any task name (hostile ones included), still unique per task."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task)[:80]
    return f"{safe}-{hashlib.sha256(task.encode()).hexdigest()[:8]}__{attempt}.log"


class CommandRunner(Runner):
    """Runs ``template`` per (task, attempt); see the module docstring for the contract."""

    name = "command"

    def __init__(self, template: str | Sequence[str], tasks: Sequence[str], timeout: float = 3600.0, endpoint: str = ""):
        try:
            self.template = shlex.split(template) if isinstance(template, str) else list(template)
        except ValueError as error:  # an unclosed quote
            raise AblationError(f"the command template {template!r} is not a command line ({error}); check --command") from None
        if not self.template:
            raise AblationError("the command runner needs a command template, e.g. --command 'my-runner {model} {task}'")
        if not tasks:
            raise AblationError("the command runner needs at least one task (--tasks FILE, one task name per line)")
        self._tasks, self.timeout, self.endpoint = list(dict.fromkeys(tasks)), timeout, endpoint

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def settings(self) -> dict:
        return {"template": self.template, "tasks": self._tasks, "timeout": self.timeout}

    def check(self) -> None:
        """The template's program exists and can be run (one with a placeholder is left to run time)."""
        program = self.template[0]
        if "{" not in program and shutil.which(program) is None:
            raise AblationError(f"the runner command {program!r} was not found or is not executable; check --command")

    def run(self, model: str, todo: Sequence[tuple[str, int]], record: Record, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        for task, attempt in todo:
            args = fill(self.template, {"model": model, "task": task, "attempt": str(attempt), "log_dir": str(log_dir),
                                        "endpoint": self.endpoint})
            log_path = log_dir / log_name(task, attempt)
            start = time.perf_counter()
            try:
                done = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout)
                verdict = parse_verdict(done.stdout)
                status = verdict or "invalid"
                detail = f"exit {done.returncode}" + ("" if verdict else ": no JSON verdict on the last line")
                output = f"{done.stdout}\n--- stderr ---\n{done.stderr}"
            except FileNotFoundError:
                raise AblationError(f"the runner command {args[0]!r} was not found; check --command") from None
            except subprocess.TimeoutExpired:
                status, detail, output = "invalid", f"timed out after {self.timeout:g} s", ""
            log_path.write_text(f"# {args}\n{output}", encoding="utf-8")
            record(Attempt(task, attempt, status, time.perf_counter() - start, str(log_path), detail))
