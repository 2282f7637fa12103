"""The Harbor runner: terminal-bench 2 tasks with Harbor's CLI in Docker, the model served over HTTP.

Per sweep: check that a Docker engine runs, start the model server from a command template
(vLLM by default, or SGLang, or anything OpenAI-compatible), wait until it answers (``/v1/models``, or ``/health``),
run ``harbor run`` once per group of tasks that need the same number of attempts, turn each
trial folder's ``result.json`` into an attempt, and stop the server. Pass is
``verifier_result.rewards["reward"] == 1``; a trial without a reward because of an
infrastructure error (or marked ``reward_valid: false``) is invalid; the agent or the verifier
running out of time is the model's doing, a valid fail.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.base import Attempt, Record, Runner
from abliterate.objectives.sweep.command import fill
from abliterate.objectives.sweep.serve import answers

DEFAULT_SERVE = "vllm serve {model} --served-model-name {name} --port {port}"
# hosted_vllm needs model_info; zero costs keep LiteLLM from guessing prices.
# Timeouts that are the model's doing; any other exception without a reward is infrastructure.
MODEL_TIMEOUTS = ("AgentTimeoutError", "VerifierTimeoutError")
MODEL_INFO = {"max_input_tokens": 32768, "max_output_tokens": 8192, "input_cost_per_token": 0, "output_cost_per_token": 0}


def docker_engine_error() -> str | None:
    """Why no Docker engine can be used here, or None when ``docker info`` succeeds."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[0] if lines else f"docker info exited {done.returncode}"
    return None


def trial_outcome(result: dict) -> tuple[str, str]:
    """(pass / fail / invalid, why) for one Harbor trial's ``result.json`` contents."""
    exception = result.get("exception_info") or {}
    kind = exception.get("exception_type", "") if isinstance(exception, dict) else str(exception)
    rewards = (result.get("verifier_result") or {}).get("rewards") or {}
    reward = rewards.get("reward")
    if result.get("reward_valid") is False:
        return "invalid", f"reward marked invalid ({kind or 'no exception recorded'})"
    if reward is not None:
        return ("pass" if float(reward) == 1 else "fail"), f"reward {reward}" + (f" after {kind}" if kind else "")
    if kind in MODEL_TIMEOUTS:
        return "fail", f"{kind}: counted as a fail"
    return "invalid", f"no reward ({kind or 'verifier did not run'})"


def parse_job(job_dir: str | Path) -> list[tuple[str, str, float, str, str]]:
    """(task, status, seconds, result path, why) for every trial of a Harbor job folder, by start time."""
    found = []
    for path in sorted(Path(job_dir).glob("*/result.json")):
        try:
            result = _validated(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            found.append((path.parent.name.rsplit("__", 1)[0], "invalid", 0.0, str(path), f"unreadable result.json: {error}", ""))
            continue
        task = result.get("task_name") or path.parent.name.rsplit("__", 1)[0]
        status, why = trial_outcome(result)
        found.append((task, status, _seconds(result), str(path), why, result.get("started_at") or ""))
    found.sort(key=lambda row: (row[5], row[3]))
    return [row[:5] for row in found]


def _validated(result: dict) -> dict:
    """The result read through Harbor's own model where Harbor is installed (it needs Python
    >= 3.12), so its field meanings win; the plain JSON otherwise."""
    try:
        from harbor.models.trial.result import TrialResult
    except ImportError:
        return result
    return {**result, **TrialResult.model_validate(result).model_dump(mode="json")}


def _seconds(result: dict) -> float:
    from datetime import datetime

    try:
        start, end = (datetime.fromisoformat(str(result[k]).replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
        return (end - start).total_seconds()
    except (KeyError, ValueError, TypeError):
        return 0.0


class ModelServer:
    """An OpenAI-compatible server for one checkpoint, started from a template and stopped after."""

    def __init__(self, template: str, model: str, name: str, port: int, log_path: Path, health_timeout: float = 900.0):
        self.args = fill(shlex.split(template), {"model": model, "name": name, "port": str(port)})
        self.port, self.log_path, self.health_timeout = port, log_path, health_timeout
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ready_urls(self) -> tuple[str, ...]:
        """Where a ready server answers 200: vLLM and SGLang at /v1/models, ``transformers serve`` at
        /health (its /v1/models lists the hub cache and fails without one)."""
        return f"{self.endpoint}/models", f"http://127.0.0.1:{self.port}/health"

    def __enter__(self) -> ModelServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w", encoding="utf-8")
        try:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            raise AblationError(f"the model server command {self.args[0]!r} was not found; install it or set --serve") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
                raise AblationError(f"the model server exited with {self.process.returncode} before it was ready ({tail[0]}); see {self.log_path}")
            if any(answers(url) for url in self.ready_urls):
                return self
            time.sleep(2)
        self.__exit__(None, None, None)
        raise AblationError(f"the model server did not answer on {self.endpoint} within {self.health_timeout:.0f} s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class HarborRunner(Runner):
    """terminal-bench 2 (or any Harbor dataset) through the ``harbor`` CLI."""

    name = "harbor"

    def __init__(self, tasks: Sequence[str], dataset: str = "terminal-bench@2.0", agent: str = "terminus-2",
                 serve: str = DEFAULT_SERVE, port: int = 8000, concurrency: int = 4, max_retries: int = 2,
                 served_name: str = "candidate", harbor: str = "harbor", jobs_dir: str | Path = "harbor-jobs",
                 health_timeout: float = 900.0):
        if not tasks:
            raise AblationError("the harbor runner needs the task names to run (--tasks FILE, one per line)")
        self._tasks = list(dict.fromkeys(tasks))
        try:
            self.server_program = shlex.split(serve)[0] if serve.strip() else ""
        except ValueError as error:  # an unclosed quote
            raise AblationError(f"the model server template {serve!r} is not a command line ({error}); check --serve") from None
        if not self.server_program:
            raise AblationError("the model server template is empty; set --serve or leave it out for vllm serve")
        self.dataset, self.agent, self.serve, self.port = dataset, agent, serve, port
        self.concurrency, self.max_retries, self.served_name = concurrency, max_retries, served_name
        self.harbor, self.jobs_dir, self.health_timeout = harbor, Path(jobs_dir), health_timeout

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def settings(self) -> dict:
        return {"dataset": self.dataset, "agent": self.agent, "serve": self.serve, "tasks": self._tasks, "model_info": MODEL_INFO}

    def command(self, job: str, tasks: Sequence[str], attempts: int) -> list[str]:
        """The ``harbor run`` argument list for ``attempts`` attempts of each of ``tasks``. A
        ``dataset`` that is a local folder of tasks is run from there (``-p``), any other is a
        name in Harbor's registry (``-d``)."""
        source = ["-p", str(Path(self.dataset).resolve())] if Path(self.dataset).is_dir() else ["-d", self.dataset]
        args = [self.harbor, "run", *source, "-a", self.agent, "-m", f"hosted_vllm/{self.served_name}",
                "--ak", f"api_base=http://127.0.0.1:{self.port}/v1", "--ak", f"model_info={json.dumps(MODEL_INFO)}",
                "-k", str(attempts), "-n", str(self.concurrency), "--max-retries", str(self.max_retries),
                "-o", str(self.jobs_dir), "--job-name", job, "--env", "docker"]
        for task in tasks:
            args += ["-i", task]
        return args

    def check(self) -> None:
        """A Docker engine answers, and the harbor and model server programs exist."""
        problem = docker_engine_error()
        if problem:
            raise AblationError(f"the harbor runner needs a running Docker engine and there is none here ({problem}); "
                                "start Docker or use --runner local")
        if shutil.which(self.harbor) is None:
            raise AblationError(f"the harbor command {self.harbor!r} was not found; install harbor (Python >= 3.12) or use --runner local")
        if "{" not in self.server_program and shutil.which(self.server_program) is None:
            raise AblationError(f"the model server command {self.server_program!r} was not found; install it or set --serve")

    def run(self, model: str, todo: Sequence[tuple[str, int]], record: Record, log_dir: Path) -> None:
        self.check()  # again: the engine may have stopped since the promoter started
        missing: dict[str, list[int]] = defaultdict(list)
        for task, attempt in todo:
            missing[task].append(attempt)
        groups: dict[int, list[str]] = defaultdict(list)
        for task, attempts in missing.items():
            groups[len(attempts)].append(task)
        with ModelServer(self.serve, model, self.served_name, self.port, log_dir / "server.log", self.health_timeout):
            for count, tasks in sorted(groups.items()):
                job = f"abliterate-{uuid.uuid4().hex[:12]}"
                with open(log_dir / f"{job}.log", "w", encoding="utf-8") as log:
                    subprocess.run(self.command(job, tasks, count), stdout=log, stderr=subprocess.STDOUT, check=False)
                self._record_job(self.jobs_dir / job, {t: missing[t] for t in tasks}, record)

    @staticmethod
    def _record_job(job_dir: Path, wanted: dict[str, list[int]], record: Record) -> None:
        """Give the job's trials the attempt numbers they were run for; a missing one is invalid."""
        results: dict[str, list] = defaultdict(list)
        for task, status, seconds, path, why in parse_job(job_dir):
            results[task].append((status, seconds, path, why))
        for task, attempts in wanted.items():
            got = results.get(task, [])
            for i, attempt in enumerate(attempts):
                if i < len(got):
                    status, seconds, path, why = got[i]
                    record(Attempt(task, attempt, status, seconds, path, why))
                else:
                    record(Attempt(task, attempt, "invalid", 0.0, str(job_dir), "harbor wrote no result for this attempt"))
