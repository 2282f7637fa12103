"""Terminal tasks run for real: each attempt in a fresh container, an agent at its shell, the
task's own test deciding.

One contract for who works in the container, :class:`Agent`, and its implementations side by side:

* :class:`ReferenceAgent` runs the task's ``solution/solve.sh`` (every shipped task must pass so);
* :class:`IdleAgent` does nothing (every shipped task must fail so);
* :class:`ChatAgent` is the model under test, reached through an OpenAI-compatible
  ``/v1/chat/completions`` endpoint: each turn it answers with one shell command, which runs in
  the container, and it reads the output, until it says it is done, stops giving commands, or
  runs out of turns or of the task's agent time.

:class:`ContainerRunner` is the sweep's :class:`~objectives.sweep.base.Runner` over them. An
attempt's outcome is the reward that ``tests/test.sh`` writes (1 pass, 0 fail). The agent
running out of turns or time, or a test that hangs, is a valid fail; a container that cannot be
started or a test that leaves no reward is ``invalid`` (retried, never counted). Each attempt's
transcript and test output are kept as ``<log_dir>/<task>-<attempt>.json``.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.base import Attempt, Record, Runner
from abliterate.objectives.sweep.engine import Container, DockerEngine
from abliterate.objectives.sweep.task_folder import TerminalTask

REWARD = "/logs/verifier/reward.txt"
OUTPUT_CHARS = 2000  # of a command's output the agent reads back (the tail: errors come last)


@dataclass
class Transcript:
    """What happened in one attempt, as the log keeps it."""

    turns: list[dict] = field(default_factory=list)  # {"command", "code", "output"} or {"said"}
    ended: str = ""  # why the agent stopped: done, no command, turn limit, time limit


class Agent(abc.ABC):
    """Works on one task in one container until it is done or ``deadline`` (time.monotonic()) passes."""

    name: str = "agent"

    def open(self, model: str) -> None:  # noqa: B027 - optional hook: most agents need nothing per model
        """Get ready to act as ``model`` (a checkpoint folder): start what serves it."""

    def close(self) -> None:  # noqa: B027
        """Stop what :meth:`open` started."""

    def settings(self) -> dict:
        """Everything of the agent that changes results (a sweep's cache key includes it)."""
        return {"agent": self.name}

    @abc.abstractmethod
    def act(self, task: TerminalTask, container: Container, deadline: float) -> Transcript:
        """Work in ``container`` on ``task``."""


class ReferenceAgent(Agent):
    """Runs the task's reference solution."""

    name = "reference"

    def act(self, task, container, deadline):
        if not task.has_solution:
            raise AblationError(f"task {task.name} has no solution/solve.sh to run")
        container.copy_in(task.folder / "solution", "/solution")
        done = container.run("bash /solution/solve.sh", timeout=max(deadline - time.monotonic(), 1.0))
        return Transcript([{"command": "bash /solution/solve.sh", "code": done.code, "output": done.output}],
                          "time limit" if done.timed_out else "done")


class IdleAgent(Agent):
    """Does nothing: the floor every task's test must fail."""

    name = "idle"

    def act(self, task, container, deadline):
        return Transcript([], "done")


SYSTEM = ("You are an operations engineer with root access to a Linux machine. Work on the task one shell "
          "command at a time. Reply with exactly one command in a fenced code block, for example:\n"
          "```bash\nls -la /tmp\n```\n"
          "You will then be shown its exit code and output. When the task is complete, reply with DONE alone.")
COMMAND = re.compile(r"```(?:bash|sh|shell|console)?[ \t]*\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")


def command_of(reply: str) -> str | None:
    """The shell command a reply gives: its first fenced code block, else a line starting with
    ``$ ``, else a reply that is nothing but one inline code span. None: no command (a refusal,
    a question, DONE)."""
    block = COMMAND.search(reply)
    if block and block.group(1).strip():
        return block.group(1).strip()
    for line in reply.splitlines():
        if line.startswith("$ ") and line[2:].strip():
            return line[2:].strip()
    whole = INLINE.fullmatch(reply.strip())
    return whole.group(1).strip() if whole else None


class ChatAgent(Agent):
    """The model under test behind an OpenAI-compatible endpoint, ``turns`` replies at most.

    Either ``server`` (a :class:`~objectives.sweep.serve.TransformersServer`) serves each model
    the runner is given, for the length of its attempts, or ``base_url`` (…/v1) and
    ``model_name`` name an endpoint someone else runs (vLLM, SGLang)."""

    name = "chat"

    def __init__(self, base_url: str = "", model_name: str = "", turns: int = 8, max_tokens: int = 256, server=None):
        if server is None and not base_url:
            raise AblationError("the chat agent needs a model server or the base_url of a running one")
        self.base_url, self.model_name, self.server = base_url.rstrip("/"), model_name, server
        self.turns, self.max_tokens = turns, max_tokens

    def open(self, model):
        if self.server is not None:
            self.base_url, self.model_name = self.server.start(model), model  # the server answers to the name it serves

    def close(self):
        if self.server is not None:
            self.server.stop()

    def settings(self):
        served = {"server": type(self.server).__name__, "dtype": self.server.dtype} if self.server is not None else {}
        protocol = hashlib.sha256(SYSTEM.encode()).hexdigest()[:12]
        return {"agent": self.name, "turns": self.turns, "max_tokens": self.max_tokens, "protocol": protocol, **served}

    def reply(self, messages: list[dict], timeout: float) -> str:
        """The model's next message (greedy); an endpoint that fails raises OSError (urllib's)."""
        body = json.dumps({"model": self.model_name, "messages": messages, "max_tokens": self.max_tokens,
                           "temperature": 0.0}).encode()
        request = urllib.request.Request(f"{self.base_url}/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)["choices"][0]["message"]["content"] or ""

    def act(self, task, container, deadline):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task.instruction}]
        transcript = Transcript()
        for _ in range(self.turns):
            left = deadline - time.monotonic()
            if left <= 0:
                transcript.ended = "time limit"
                return transcript
            said = self.reply(messages, timeout=left)
            transcript.turns.append({"said": said})
            messages.append({"role": "assistant", "content": said})
            command = command_of(said)
            if command is None:
                transcript.ended = "done" if said.strip().upper().startswith("DONE") else "no command"
                return transcript
            done = container.run(command, timeout=max(min(deadline - time.monotonic(), 60.0), 1.0))
            output = done.output[-OUTPUT_CHARS:]
            transcript.turns.append({"command": command, "code": done.code, "output": output})
            status = "timed out" if done.timed_out else f"exit code {done.code}"
            messages.append({"role": "user", "content": f"({status})\n{output}"})
        transcript.ended = "turn limit"
        return transcript


def verify(task: TerminalTask, container: Container) -> tuple[str, str]:
    """(status, test output): the reward ``tests/test.sh`` writes decides; a test that runs past
    the verifier's time is a fail, one that leaves no reward an invalid attempt."""
    container.copy_in(task.folder / "tests", "/tests")
    tested = container.run(f"rm -f {REWARD}; /tests/test.sh", timeout=task.verifier_seconds)
    if tested.timed_out:
        return "fail", f"the test ran past {task.verifier_seconds:g} s\n{tested.output}"
    reward = container.run(f"cat {REWARD}", timeout=30)
    value = reward.output.strip()
    if reward.code != 0 or value not in ("0", "1"):
        return "invalid", f"tests/test.sh left no reward of 0 or 1 in {REWARD} (got {value!r})\n{tested.output}"
    return ("pass" if value == "1" else "fail"), tested.output


class ContainerRunner(Runner):
    """Attempts of terminal ``tasks`` by ``agent``, each in a fresh container of the task's image."""

    name = "containers"

    def __init__(self, tasks: Sequence[TerminalTask], agent: Agent, engine: DockerEngine | None = None):
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise AblationError("two tasks share a folder name; task names must be unique")
        self.by_name, self.agent, self.engine = {t.name: t for t in tasks}, agent, engine or DockerEngine()

    def tasks(self) -> list[str]:
        return list(self.by_name)

    def settings(self) -> dict:
        return {**self.agent.settings(), "tasks": {name: t.environment_digest() for name, t in self.by_name.items()}}

    def check(self) -> None:
        """An engine answers and every task's base image is here (no registry can supply one)."""
        self.engine.check()
        for task in self.by_name.values():
            self.engine.check_base(task)

    def run(self, model: str, todo: Sequence[tuple[str, int]], record: Record, log_dir: Path) -> None:
        self.engine.check()
        images = {name: self.engine.image(self.by_name[name]) for name in dict.fromkeys(t for t, _ in todo)}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.agent.open(model)
        try:
            for name, attempt in todo:
                record(self.attempt(self.by_name[name], attempt, images[name], log_dir))
        finally:
            self.agent.close()

    def attempt(self, task: TerminalTask, attempt: int, image: str, log_dir: Path) -> Attempt:
        start = time.monotonic()
        log = {"task": task.name, "attempt": attempt, "agent": self.agent.name}
        try:
            container = self.engine.start(image, task.name)
        except AblationError as error:
            return self._kept(log, log_dir, Attempt(task.name, attempt, "invalid", time.monotonic() - start, detail=str(error)))
        try:
            transcript = self.agent.act(task, container, start + task.agent_seconds)
            status, tested = verify(task, container)
            log |= {"ended": transcript.ended, "turns": transcript.turns, "test_output": tested}
            detail = transcript.ended if status != "invalid" else tested.splitlines()[0]
        except AblationError as error:  # a copy into the container failed: the machinery, not the agent
            status, detail = "invalid", str(error)
        except OSError as error:  # the model server went away mid-attempt
            status, detail = "invalid", f"{type(error).__name__}: {error}"
        finally:
            container.remove()
        return self._kept(log, log_dir, Attempt(task.name, attempt, status, time.monotonic() - start, detail=detail))

    @staticmethod
    def _kept(log: dict, log_dir: Path, attempt: Attempt) -> Attempt:
        path = log_dir / f"{attempt.task}-{attempt.attempt}.json"
        path.write_text(json.dumps(log | {"status": attempt.status, "seconds": attempt.seconds, "detail": attempt.detail}, indent=1))
        return Attempt(attempt.task, attempt.attempt, attempt.status, attempt.seconds, str(path), attempt.detail)
