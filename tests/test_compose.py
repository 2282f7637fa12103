"""docker-compose.yml brought up for real on this machine's Docker engine: the project's image built
from its Dockerfile on the local base image (no registry answers here, so every wheel comes from a
folder the host fills, and PostgreSQL from tools/postgres_image, a stand-in for the official image
speaking its variables), then PostgreSQL, two CPU workers, the promoter and the dashboard. A study
created through compose runs to its end and is read from the host; the password reaches every
service as a secret file and shows in no command line, variable or log. ``docker compose down``
leaves nothing of the project, and the test removes the images it built."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from abliterate.objectives.refuser import prompt_path, refuser_path
from abliterate.objectives.sweep.serve import free_port
from abliterate.storage.urls import PASSWORD_FILE, normalize_url

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[1]
BASE = os.environ.get("ABLITERATE_BASE_IMAGE", "abliterate-base:bookworm")  # what .ci/docker builds
LABEL = "abliterate.compose-test"
TRIALS, STUDY = 6, "compose"


def docker(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **options)


def staged_context(stage: Path) -> None:
    """The build context .dockerignore admits, the compose files, and wheels/: every wheel the
    image installs (the project's dependencies, this torch build, setuptools to build the project)."""
    admitted = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for name in [*admitted, "Dockerfile", ".dockerignore", "docker-compose.yml", "docker-compose.cpu.yml"]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, stage / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, stage / name)
    import torch

    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(stage / "wheels"), "--only-binary=:all:",
                    f"torch=={torch.__version__}", "setuptools>=69", str(ROOT)], check=True)


def models_folder(folder: Path) -> None:
    """The shipped refuser and its prompt sets, each set one file in the order --split cuts it."""
    shutil.copytree(refuser_path(), folder / "refuser")
    for kind in ("harmful", "harmless"):
        lines = [line for purpose in ("extraction", "evaluation", "confirmation")
                 for line in prompt_path(kind, purpose).read_text().splitlines()]
        (folder / f"{kind}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def compose(tmp_path):
    """Run ``docker compose`` on the staged project; at the end ``down`` and the images go."""
    owner = uuid.uuid4().hex[:10]
    stage, password = tmp_path / "project", secrets.token_hex(16)
    stage.mkdir()
    staged_context(stage)
    models_folder(tmp_path / "models")
    secret = tmp_path / "postgres-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    app, postgres = f"abliterate-compose-test:{owner}", f"abliterate-compose-postgres:{owner}"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": f"abliterate-test-{owner}", "ABLITERATE_IMAGE": app, "POSTGRES_IMAGE": postgres,
           "POSTGRES_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()), "MODELS": str(tmp_path / "models"),
           "POSTGRES_PASSWORD_PATH": str(secret), "STUDY": STUDY}
    for name in ("ABLITERATE_STORAGE", PASSWORD_FILE, "RUNNER", "TASKS", "PROMOTE_OPTIONS"):
        env.pop(name, None)
    compose_command = ["docker", "compose", "--project-directory", str(stage), "-f", str(stage / "docker-compose.yml"),
                       "-f", str(stage / "docker-compose.cpu.yml")]
    built = []
    try:
        for tag, context, args in [(app, stage, ["PIP_NO_INDEX=1", "PIP_FIND_LINKS=/app/wheels"]), (postgres, ROOT / "tools" / "postgres_image", [])]:
            build = docker("build", "--force-rm", "--label", f"{LABEL}={owner}", "-t", tag, "--build-arg", f"BASE={BASE}",
                           *[arg for pair in args for arg in ("--build-arg", pair)], str(context))
            assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
            built.append(tag)

        def run(*args: str, check: bool = True, **options) -> subprocess.CompletedProcess:
            done = subprocess.run([*compose_command, *args], capture_output=True, text=True, env=env, **options)
            assert not check or done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            return done

        yield run, env, password
    finally:
        subprocess.run([*compose_command, "down", "--volumes", "--remove-orphans"], capture_output=True, env=env)
        if built:
            docker("rmi", "-f", *built)
    project = f"label=com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"
    for kind in ("ps -a", "network ls", "volume ls"):
        assert docker(*kind.split(), "-q", "--filter", project).stdout.split() == [], f"docker {kind} still lists the project's"
    assert docker("images", "-q", "--filter", f"label={LABEL}={owner}").stdout.split() == []


def wait_for(check, what: str, seconds: float = 300.0):
    """``check()``'s first truthy value; a deadline only for a service that never comes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} within {seconds:.0f} s")


def dashboard_studies(port: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
            return json.loads(answer.read())["study_summaries"]
    except OSError:
        return None


@pytest.mark.timeout(3600)
def test_a_study_runs_through_compose_and_is_read_from_the_host(compose, monkeypatch):
    run, env, password = compose
    run("up", "--detach", "--wait", "postgres", "dashboard")
    run("run", "--rm", "worker", "abliterate", "search", "--model", "/models/refuser", "--harmful", "/models/harmful.txt",
        "--harmless", "/models/harmless.txt", "--split", "64,48,64", "--dtype", "fp32", "--max-new-tokens", "16",
        "--trials", str(TRIALS), "--workers", "0", "--study", STUDY, "--seed", "0")
    run("up", "--scale", "worker=2", "worker")  # attached: returns once both workers have left the finished study
    env["PROMOTE_OPTIONS"] = "--once --attempts 3 --controls 0"
    run("up", "--exit-code-from", "promoter", "promoter")

    # The host reads the study through the published port, with the password from the same file.
    host = {**env, "ABLITERATE_STORAGE": f"postgresql://postgres@127.0.0.1:{env['POSTGRES_PORT']}/abliterate",
            PASSWORD_FILE: env["POSTGRES_PASSWORD_PATH"]}
    monkeypatch.setenv(PASSWORD_FILE, env["POSTGRES_PASSWORD_PATH"])
    study = optuna.load_study(study_name=STUDY, storage=normalize_url(host["ABLITERATE_STORAGE"]))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= TRIALS and {t.state for t in finished} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    report = subprocess.run([sys.executable, "-m", "abliterate", "report", "--study", STUDY, "--json"], capture_output=True, text=True, env=host, check=True)
    assert json.loads(report.stdout), "the promoter recorded no candidate"
    assert STUDY in {s["study_name"] for s in wait_for(lambda: dashboard_studies(env["DASHBOARD_PORT"]), "the dashboard answered")}

    containers = run("ps", "--all", "--quiet").stdout.split()
    assert len(containers) >= 5  # postgres, the dashboard, two workers, the promoter
    assert password not in docker("inspect", *containers).stdout
    assert password not in run("logs", "--no-color").stdout

