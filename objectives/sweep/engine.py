"""The Docker engine, through its own command line: images for task folders, containers per attempt.

Everything this module creates carries the label :data:`LABEL` (value: the engine's ``owner``),
so a sweep, or a test, can list and remove exactly what it made (:meth:`DockerEngine.clean`).
Images are tagged ``abliterate-task/<task>:<hash of the build context>``: an unchanged task
reuses its image, a changed one gets a new tag.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.task_folder import BASE_IMAGE, TerminalTask

LABEL = "abliterate.sweep"
BUILD_TAIL = 12  # build output lines a failed build shows
READY_SECONDS = 60.0  # for a container's HEALTHCHECK to pass


@dataclass(frozen=True)
class Finished:
    """A command run in a container: its exit code (None when it ran out of time) and output."""

    code: int | None
    output: str

    @property
    def timed_out(self) -> bool:
        return self.code is None


class DockerEngine:
    """``owner``: the label value of everything this engine makes (one per sweep or test session)."""

    def __init__(self, owner: str = "1", docker: str = "docker"):
        self.owner, self.docker = owner, docker

    def _run(self, *args: str, timeout: float | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.docker, *args], capture_output=True, timeout=timeout, input=input)

    def check(self) -> None:
        """An engine answers here, or one line on how to get one."""
        if shutil.which(self.docker) is None:
            raise AblationError(f"no {self.docker} command here; install and start a Docker engine (bash .ci/docker does both on Debian)")
        try:
            answered = self._run("info", "--format", "{{.ServerVersion}}", timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            answered = False
        if not answered:
            raise AblationError("the Docker engine does not answer (docker info fails); start dockerd (bash .ci/docker starts it)")

    def has_image(self, image: str) -> bool:
        return self._run("image", "inspect", image).returncode == 0

    def check_base(self, task: TerminalTask) -> None:
        """The image the task's Dockerfile builds FROM is on this machine: nothing is pulled."""
        base = task.base_image()
        if not self.has_image(base):
            how = "bash .ci/docker builds it" if base == BASE_IMAGE else f"build or load {base} here first (docker build / docker load)"
            raise AblationError(f"task {task.name} builds FROM {base}, which is not on this machine and cannot be pulled here; {how}")

    def image(self, task: TerminalTask) -> str:
        """The task's image, built now unless an unchanged one exists. A base image missing here is
        an error before the build starts: no registry can be reached to pull it."""
        tag = f"abliterate-task/{task.name}:{task.environment_digest()}"
        if self.has_image(tag):
            return tag
        self.check_base(task)
        try:
            built = self._run("build", "--force-rm", "--label", f"{LABEL}={self.owner}", "-t", tag, str(task.folder / "environment"),
                              timeout=task.build_seconds)
        except subprocess.TimeoutExpired:
            raise AblationError(f"task {task.name}: its image took longer than build_timeout_sec ({task.build_seconds:g} s) "
                                "to build; raise it in task.toml") from None
        if built.returncode != 0:
            lines = (built.stdout + built.stderr).decode(errors="replace").strip().splitlines()[-BUILD_TAIL:]
            raise AblationError(f"task {task.name}: environment/Dockerfile failed to build; its last lines: " + " | ".join(lines))
        return tag

    def start(self, image: str, name: str) -> Container:
        """A fresh container of ``image``, kept alive by ``sleep infinity`` (as Harbor does) until
        :meth:`Container.remove`; a task's ENTRYPOINT may start the services the task is about
        before it runs that command. No network: the agent's model is reached from the host."""
        unique = f"abliterate-{name}-{uuid.uuid4().hex[:8]}"
        started = self._run("run", "-d", "--label", f"{LABEL}={self.owner}", "--name", unique, "--network", "none",
                            image, "sleep", "infinity", timeout=120)
        if started.returncode != 0:
            raise AblationError(f"could not start a container of {image}: {started.stderr.decode(errors='replace').strip()}")
        container = Container(self, started.stdout.decode().strip())
        try:
            self._wait_healthy(container.id, timeout=READY_SECONDS)
        except AblationError:
            container.remove()
            raise
        return container

    def _wait_healthy(self, container_id: str, timeout: float) -> None:
        """Until the image's HEALTHCHECK (if it has one) reports healthy: the services a task's
        ENTRYPOINT starts are up before the agent, or the test, looks."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._run("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", container_id)
            status = state.stdout.decode().strip()
            if state.returncode == 0 and status in ("", "healthy"):
                return
            if state.returncode != 0 or status == "unhealthy" or time.monotonic() > deadline:
                raise AblationError(f"container {container_id[:12]} never became ready (health: {status or 'gone'})")
            time.sleep(0.2)

    def clean(self, images: bool = False) -> None:
        """Remove every container (and with ``images``, every image) labelled with this owner."""
        label = f"label={LABEL}={self.owner}"
        containers = self._run("ps", "-aq", "--filter", label).stdout.decode().split()
        if containers:
            self._run("rm", "-f", *containers)
        if images:
            found = self._run("images", "-q", "--filter", label).stdout.decode().split()
            if found:
                self._run("rmi", "-f", *sorted(set(found)))


class Container:
    """One running container; ``run`` executes a bash command line inside it."""

    def __init__(self, engine: DockerEngine, container_id: str):
        self.engine, self.id = engine, container_id

    def run(self, command: str, timeout: float) -> Finished:
        try:
            done = self.engine._run("exec", self.id, "bash", "-c", command, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            return Finished(None, _text(error.stdout) + _text(error.stderr))
        return Finished(done.returncode, _text(done.stdout) + _text(done.stderr))

    def copy_in(self, source: Path, target: str) -> None:
        """``source`` (a folder) becomes ``target`` inside the container."""
        copied = self.engine._run("cp", f"{source}/.", f"{self.id}:{target}") if self._mkdir(target) else None
        if copied is None or copied.returncode != 0:
            detail = copied.stderr.decode(errors="replace").strip() if copied is not None else "mkdir failed"
            raise AblationError(f"could not copy {source} into the container: {detail}")

    def _mkdir(self, target: str) -> bool:
        return self.run(f"mkdir -p {shlex.quote(target)}", timeout=30).code == 0

    def remove(self) -> None:
        self.engine._run("rm", "-f", self.id)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
