"""A model checkpoint served over an OpenAI-compatible HTTP endpoint for the length of a sweep.

:class:`TransformersServer` runs ``transformers serve`` (the ``transformers[serving]`` extra;
``pip install 'abliterate[agent]'``) on one local folder, on the CPU or a GPU; vLLM and SGLang
answer the same ``/v1/chat/completions`` and can stand behind :class:`~objectives.sweep.container.ChatAgent`
by its ``base_url`` instead. The server is ready when ``/health`` answers; a server that exits
first shows its last line, one that never answers is stopped and named.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from abliterate.ablation.errors import AblationError

PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): it is sent SIGTERM when the sweep's process
    ends, however that ends (a promoter killed mid-sweep must not leave a model holding memory)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stop() is the only way out
        pass


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now (a server's readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:  # refused (not listening yet), reset, or an HTTP error status
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TransformersServer:
    """``transformers serve`` on 127.0.0.1 at a free port; :meth:`start` returns the ``/v1`` base URL.
    ``dtype``: as stored (auto) or e.g. float32, which a CPU without bf16 instructions runs several
    times faster than bf16."""

    def __init__(self, device: str = "cpu", ready_seconds: float = 300.0, dtype: str = "auto"):
        self.device, self.ready_seconds, self.dtype = device, ready_seconds, dtype
        self.process: subprocess.Popen | None = None
        self.log: Path | None = None

    def command(self, model: str, port: int) -> list[str]:
        program = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
        if program is None:
            raise AblationError("serving a model to the agent needs `transformers serve`: pip install 'abliterate[agent]'")
        return [program, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", self.device,
                "--dtype", self.dtype, "--log-level", "warning", model]

    def start(self, model: str) -> str:
        if not Path(model, "config.json").exists():
            raise AblationError(f"no model folder at {model} to serve (it has no config.json)")
        port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="abliterate-serve-", suffix=".log")[1])
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command(model, port), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + self.ready_seconds
        while True:
            if self.process.poll() is not None:
                lines = self.log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
                self.process = None
                raise AblationError(f"the model server for {model} exited before it answered: {lines[-1].strip()} "
                                    f"(the whole output: {self.log})")
            if answers(f"{url}/health"):
                return f"{url}/v1"
            if time.monotonic() > deadline:
                self.stop()
                raise AblationError(f"the model server for {model} never answered at {url}/health in "
                                    f"{self.ready_seconds:g} s; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
