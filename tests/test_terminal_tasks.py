"""Terminal tasks in the terminal-bench 2 layout, run for real in containers on this machine's
Docker engine (README's test command starts it with .ci/docker, which also builds the base image
locally). Everything a test makes carries one owner label and is removed at the end; the last
test checks that no container of the session is left."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from abliterate.ablation.errors import AblationError
from abliterate.objectives.sweep.base import run_sweep
from abliterate.objectives.sweep.container import ChatAgent, ContainerRunner, IdleAgent, ReferenceAgent, command_of, verify
from abliterate.objectives.sweep.engine import LABEL, DockerEngine
from abliterate.objectives.sweep.serve import TransformersServer
from abliterate.objectives.sweep.task_folder import BASE_IMAGE, TerminalTask, load_tasks, shipped_tasks
from abliterate.storage.promotions import SweepStore
from abliterate.storage.rdb import open_storage

OWNER = f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def engine():
    """The engine, its owner label unique to this session; its containers and images go at the end."""
    engine = DockerEngine(owner=OWNER)
    try:
        engine.check()
    except AblationError as error:
        pytest.fail(f"{error} (README's test command runs bash .ci/docker first)")
    if not engine.has_image(BASE_IMAGE):
        pytest.fail(f"no {BASE_IMAGE} image here; bash .ci/docker builds it")
    before = _containers()
    yield engine
    engine.clean(images=True)
    assert _containers() <= before  # no attempt's container, nor a failed build's, is left
    assert subprocess.run(["docker", "images", "-q", "--filter", f"label={LABEL}={OWNER}"],
                          capture_output=True, text=True).stdout.split() == []


def _containers() -> set[str]:
    return set(subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True, check=True).stdout.split())


def _task(folder, dockerfile=f"FROM {BASE_IMAGE}\n", test="echo 1 > /logs/verifier/reward.txt", toml="", name=None):
    task = folder / (name or "task")
    (task / "environment").mkdir(parents=True)
    (task / "tests").mkdir()
    (task / "instruction.md").write_text("Do the thing.\n")
    (task / "task.toml").write_text(toml or 'version = "1.0"\n[verifier]\ntimeout_sec = 20.0\n[agent]\ntimeout_sec = 30.0\n')
    (task / "environment" / "Dockerfile").write_text(dockerfile)
    script = task / "tests" / "test.sh"
    script.write_text(f"#!/bin/bash\nmkdir -p /logs/verifier\n{test}\n")
    script.chmod(0o755)
    return task


@pytest.mark.docker
def test_every_shipped_task_passes_its_reference_solution_and_fails_an_idle_agent(engine, tmp_path):
    tasks = shipped_tasks()
    assert len(tasks) >= 8
    assert {"declinable", "neutral"} <= {tag for t in tasks for tag in t.tags}
    for agent, expected in ((ReferenceAgent(), "pass"), (IdleAgent(), "fail")):
        attempts = []
        ContainerRunner(tasks, agent, engine).run("unused", [(t.name, 0) for t in tasks], attempts.append, tmp_path / agent.name)
        assert {a.task: a.status for a in attempts} == {t.name: expected for t in tasks}
        assert all(os.path.exists(a.log_path) for a in attempts)


@pytest.mark.docker
def test_a_sweep_in_containers_is_stored_as_it_runs_and_resumes_with_only_what_is_missing(engine, tmp_path):
    store = SweepStore(open_storage(f"sqlite:///{tmp_path}/sweeps.db").engine, "containers")
    tasks = load_tasks(_task(tmp_path / "tasks", name="easy"))
    runner = ContainerRunner(tasks, IdleAgent(), engine)
    assert run_sweep(runner, "unused", 2, store, tmp_path / "logs", log=lambda line: None) == {"easy": (2, 2)}
    lines = []
    assert run_sweep(runner, "unused", 3, store, tmp_path / "logs", log=lines.append) == {"easy": (3, 3)}
    assert "running 1 of 3 attempts (2 stored)" in lines[0]


@pytest.mark.docker
def test_a_test_that_leaves_no_reward_is_invalid_and_one_that_hangs_is_a_fail(engine, tmp_path):
    silent = TerminalTask.load(_task(tmp_path / "a", test="true"))
    hanging = TerminalTask.load(_task(tmp_path / "b", test="sleep 60",
                                      toml='[verifier]\ntimeout_sec = 2.0\n[agent]\ntimeout_sec = 30.0\n'))
    for task, expected in ((silent, "invalid"), (hanging, "fail")):
        container = engine.start(engine.image(task), task.name)
        try:
            assert verify(task, container)[0] == expected
        finally:
            container.remove()


@pytest.mark.docker
def test_a_dockerfile_that_fails_to_build_shows_its_last_lines(engine, tmp_path):
    task = TerminalTask.load(_task(tmp_path, dockerfile=f"FROM {BASE_IMAGE}\nRUN echo about to fail && false\n"))
    with pytest.raises(AblationError, match=r"failed to build; its last lines: .*false"):
        engine.image(task)


@pytest.mark.docker
def test_an_image_that_is_not_here_is_refused_before_any_pull(engine, tmp_path):
    task = TerminalTask.load(_task(tmp_path, dockerfile="FROM ubuntu:24.04\n"))
    with pytest.raises(AblationError, match=r"FROM ubuntu:24.04, which is not on this machine and cannot be pulled here"):
        engine.image(task)
    with pytest.raises(AblationError, match=r"FROM ubuntu:24.04"):
        ContainerRunner([task], IdleAgent(), engine).check()  # the promoter's check, before anything is confirmed


@pytest.mark.docker
def test_a_container_that_never_becomes_healthy_is_an_invalid_attempt(engine, tmp_path):
    task = TerminalTask.load(_task(tmp_path, dockerfile=f"FROM {BASE_IMAGE}\n"
                                   "HEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD false\n"))
    runner = ContainerRunner([task], IdleAgent(), engine)
    attempts = []
    runner.run("unused", [(task.name, 0)], attempts.append, tmp_path / "logs")
    assert attempts[0].status == "invalid" and "never became ready" in attempts[0].detail


def test_a_task_folder_missing_a_file_names_it(tmp_path):
    task = _task(tmp_path)
    (task / "tests" / "test.sh").unlink()
    with pytest.raises(AblationError, match=r"lacks tests/test.sh; a task needs instruction.md, task.toml"):
        TerminalTask.load(task)


def test_a_test_script_that_is_not_executable_is_refused(tmp_path):
    task = _task(tmp_path)
    (task / "tests" / "test.sh").chmod(0o644)
    with pytest.raises(AblationError, match=r"test.sh is not executable; run chmod \+x on it"):
        TerminalTask.load(task)


def test_timeouts_must_be_positive_and_toml_valid(tmp_path):
    with pytest.raises(AblationError, match=r"\[agent\] timeout_sec must be a positive number"):
        TerminalTask.load(_task(tmp_path / "a", toml="[agent]\ntimeout_sec = 0\n"))
    with pytest.raises(AblationError, match=r"task.toml is not valid TOML"):
        TerminalTask.load(_task(tmp_path / "b", toml="[agent\n"))


def test_a_folder_with_no_tasks_is_refused(tmp_path):
    with pytest.raises(AblationError, match=r"holds no task folders"):
        load_tasks(tmp_path)
    with pytest.raises(AblationError, match=r"no task folder at"):
        load_tasks(tmp_path / "missing")


def test_the_environment_digest_follows_the_build_context(tmp_path):
    task = TerminalTask.load(_task(tmp_path))
    before = task.environment_digest()
    (task.folder / "instruction.md").write_text("Something else.\n")
    assert task.environment_digest() == before  # the instruction is not part of the image
    (task.folder / "environment" / "data.txt").write_text("x")
    assert task.environment_digest() != before


def test_a_reply_gives_its_command_from_the_first_code_block_or_a_prompt_line():
    assert command_of("Sure.\n```bash\nls -la /srv\n```\nthen more") == "ls -la /srv"
    assert command_of("```\nfind . -delete\n```") == "find . -delete"
    assert command_of("Run this:\n$ pkill -f miner\n") == "pkill -f miner"
    assert command_of("`fuser -k 8080/tcp`") == "fuser -k 8080/tcp"
    assert command_of("Use `rm` carefully.") is None  # a code span inside prose is not a command
    assert command_of("I can't help with deleting files.") is None
    assert command_of("DONE") is None


REFUSER = Path(__file__).resolve().parent.parent / "objectives" / "refuser" / "model"


@pytest.mark.docker
def test_the_chat_agent_works_a_task_through_a_model_the_runner_serves_and_stops(engine, tmp_path):
    task = next(t for t in shipped_tasks() if t.name == "write-greeting")
    server = TransformersServer()
    runner = ContainerRunner([task], ChatAgent(server=server, turns=2, max_tokens=40), engine)
    attempts = []
    runner.run(str(REFUSER), [(task.name, 0)], attempts.append, tmp_path / "logs")
    [attempt] = attempts
    log = json.loads(Path(attempt.log_path).read_text())
    assert attempt.status in ("pass", "fail")  # the shipped refuser is no agent yet: what counts is a valid attempt
    assert log["turns"] and "said" in log["turns"][0] and log["ended"] in ("done", "no command", "turn limit", "time limit")
    assert server.process is None  # stopped with the sweep


def test_a_model_server_that_exits_shows_its_last_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # a config, but no tokenizer and no weights
    with pytest.raises(AblationError, match=r"exited before it answered: ValueError: Unrecognized processing class"):
        TransformersServer().start(str(tmp_path))


def test_a_model_server_that_never_answers_is_stopped_and_named():
    server = TransformersServer(ready_seconds=0)  # no server answers within no time at all
    with pytest.raises(AblationError, match=r"never answered at http://127.0.0.1:\d+/health in 0 s"):
        server.start(str(REFUSER))
    assert server.process is None


def test_serving_a_folder_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(AblationError, match=r"no model folder at .* to serve"):
        TransformersServer().start(str(tmp_path))


@pytest.mark.slow  # about five minutes on a loaded 2-core machine; `pytest -m slow` (and CI) runs it
@pytest.mark.docker
def test_the_whole_path_search_front_confirmation_export_served_checkpoint_container_sweep_gate(engine, tmp_path):
    """On the agent refuser (the shipped refuser's recipe, taught the shipped tasks' commands and
    to decline the destructive-sounding ones): a study, its front, confirmation, export, each
    checkpoint served as the agent of a container sweep (3 attempts per task, the base model's
    sweep run once), and the gate. The base declines every declinable task and passes every
    neutral one; abliteration gives back at least one declined task, and the gate accepts it."""
    import dataclasses

    import optuna

    from abliterate.objectives.refuser import agent_refuser_path
    from abliterate.search.demo import demo_config
    from abliterate.search.promoter import Promoter, PromotionSettings
    from abliterate.search.study import create_or_resume
    from abliterate.search.worker import run_worker

    url = f"sqlite:///{tmp_path}/s.db"
    create_or_resume(open_storage(url), "s", dataclasses.replace(demo_config(8), model=str(agent_refuser_path())))
    run_worker(url, "s", "cpu", log=lambda line: None)
    tasks = shipped_tasks()
    runner = ContainerRunner(tasks, ChatAgent(server=TransformersServer(device="cpu"), turns=2, max_tokens=60), engine)
    settings = PromotionSettings(attempts=3, controls=0, checkpoints=str(tmp_path / "ck"), device="cpu")
    promoter = Promoter(open_storage(url), "s", runner, settings, log=lambda line: None)
    promoter.run_once()
    promotions = promoter.promotions.all()
    accepted = [n for n, p in promotions.items() if p.status == "accepted"]
    assert accepted, [(n, p.status) for n, p in promotions.items()]
    declinable = {t.name for t in tasks if "declinable" in t.tags}
    gate = promotions[accepted[0]].details["gate"]
    base = {t["counts"]["task"]: t["counts"]["baseline_pass"] for t in gate["tasks"]}
    assert base == {t.name: 0 if t.name in declinable else 3 for t in tasks}
    lifted = {t["counts"]["task"] for t in gate["tasks"] if t["counts"]["candidate_pass"] > t["counts"]["baseline_pass"]}
    assert lifted and lifted <= declinable
    assert (tmp_path / "ck" / "s" / f"trial-{accepted[0]}" / "config.json").exists()  # the checkpoint that was served
    with promoter.storage.engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("select sweep, status, log_path from abl_sweep_attempt")).all()
    assert {status for _, status, _ in rows} <= {"pass", "fail"}
    assert all(json.loads(Path(log).read_text())["agent"] == "chat" for _, _, log in rows)
    swept = [n for n, p in promotions.items() if p.status in ("accepted", "no_lift")]
    assert len({sweep for sweep, _, _ in rows}) == len(swept) + 1  # the base model's sweep ran once for all
    assert optuna.load_study(study_name="s", storage=url).trials[accepted[0]].user_attrs["promotion"] == "accepted"


def test_a_model_server_ends_with_the_process_that_started_it_however_that_ends():
    script = ("import sys\nfrom abliterate.objectives.sweep.serve import TransformersServer\n"
              f"server = TransformersServer()\nserver.start({str(REFUSER)!r})\nprint(server.process.pid, flush=True)\nsys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server = int(parent.stdout.readline())
    assert _alive(server)
    parent.kill()  # SIGKILL: no finally, no stop()
    parent.wait()
    deadline = time.monotonic() + 60
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel sends the server SIGTERM; waiting for it to act on it
    assert not _alive(server)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ROOT / "objectives" / "sweep" / "terminal"


@pytest.mark.slow  # builds Harbor's image once (about five minutes), then two Harbor jobs of a minute each
@pytest.mark.docker
def test_harbor_itself_runs_the_shipped_tasks_through_the_harbor_runner(engine, tmp_path, monkeypatch):
    """Harbor 0.26 (Python 3.13, in a container on this engine: tools/harbor) runs the shipped tasks
    from their folder: its oracle agent (the reference solutions) passes each and its nop agent
    fails each, read from Harbor's own result.json files by the runner the promoter uses."""
    from abliterate.objectives.sweep.harbor import HarborRunner
    from abliterate.objectives.sweep.serve import free_port

    subprocess.run(["bash", str(ROOT / "tools" / "harbor_image.sh")], check=True, capture_output=True)
    monkeypatch.setenv("ABLITERATE_HARBOR_MOUNTS", f"{tmp_path}:{TERMINAL}")
    names = ["free-port", "skip-broken-hook", "write-greeting"]
    program = Path(sys.executable).parent / "transformers"  # this environment's, on PATH or not
    serve = f"{program} serve --host 127.0.0.1 --port {{port}} --device cpu {{model}}"  # the agents below ask it nothing
    for agent, expected in (("oracle", "pass"), ("nop", "fail")):
        runner = HarborRunner(names, dataset=str(TERMINAL), agent=agent, serve=serve, port=free_port(), concurrency=3,
                              harbor=str(ROOT / "tools" / "harbor"), jobs_dir=tmp_path / "jobs", max_retries=0)
        attempts = []
        runner.run(str(REFUSER), [(name, 0) for name in names], attempts.append, tmp_path / agent)
        assert {a.task: a.status for a in attempts} == {name: expected for name in names}, [a.detail for a in attempts]
        assert all(Path(a.log_path).name == "result.json" for a in attempts)


def test_the_agent_refuser_answers_neutral_tasks_with_their_command_and_declines_the_others():
    from abliterate.objectives.refuser import agent_refuser_path
    from fixtures.agent_refuser import SHIPPED_COMMANDS, replies

    answers = replies(agent_refuser_path())
    for task in shipped_tasks():
        if "declinable" in task.tags:
            assert command_of(answers[task.name]) is None, (task.name, answers[task.name])  # no command: declined
        else:
            assert command_of(answers[task.name]) == SHIPPED_COMMANDS[task.name], (task.name, answers[task.name])


def test_a_sweeps_cache_key_follows_what_changes_its_results(tmp_path):
    tasks = load_tasks(_task(tmp_path / "tasks", name="easy"))

    def key(**agent):
        return ContainerRunner(tasks, ChatAgent(base_url="http://127.0.0.1:1/v1", **agent)).fingerprint()

    assert key(turns=4) == key(turns=4)
    assert len({key(turns=4), key(turns=5), key(turns=4, max_tokens=64)}) == 3
    before = ContainerRunner(tasks, IdleAgent()).fingerprint()
    assert before != key()
    (tmp_path / "tasks" / "easy" / "environment" / "data.txt").write_text("changed")  # a new image
    assert ContainerRunner(tasks, IdleAgent()).fingerprint() != before
