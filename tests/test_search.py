"""The search service with real worker processes on a real PostgreSQL (127.0.0.1:5432)."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.study import CONFIG_ATTR, StudyConfig, create_or_resume, load
from storage.rdb import open_storage

FAST = dict(n_trials=8, max_new_tokens=16, batch_size=8, seed=0)


@pytest.fixture
def model_dir(tmp_path, tiny):
    model, tokenizer = tiny("qwen3")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def config(model_dir, **options):
    return StudyConfig.split(model_dir, "demo-harmful", "demo-harmless", (4, 6, 6), **(FAST | options))


def abliterate(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "search.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **popen)


def trials(url, name="s", states=(TrialState.COMPLETE,)):
    return optuna.load_study(study_name=name, storage=url).get_trials(states=states)


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_workers_share_one_study(postgres_url, model_dir):
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=12))
    workers = [abliterate("worker", "--storage", postgres_url, "--study", "s", "--device", "cpu") for _ in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    done = trials(postgres_url)
    assert 12 <= len(done) <= 13  # a worker finishing its last trial may overshoot by one
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert not trials(postgres_url, states=(TrialState.FAIL, TrialState.RUNNING))
    assert sum("computed here" in log for log in logs) == 1 and sum("from the study cache" in log for log in logs) == 1
    assert all({"kl", "feasible", "seconds_total"} <= set(t.user_attrs) for t in done)


def test_killed_worker_trial_is_retried_with_same_params(postgres_url, model_dir):
    # Long answers and no KL cap: every trial runs its refusal pass for seconds, so it is still
    # running when it is killed (the random tiny model rarely ends an answer early).
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=5, max_new_tokens=256, kl_cap=1e9))
    heartbeat = ("--heartbeat", 1, "--grace", 3)
    first = abliterate("worker", "--storage", postgres_url, "--study", "s", "--device", "cpu", *heartbeat)
    running = []

    def a_trial_running():
        running[:] = trials(postgres_url, states=(TrialState.RUNNING,)) if trials(postgres_url) else []
        return running

    wait_for(a_trial_running)
    killed = running[0]
    done_before = {t.number for t in trials(postgres_url)}
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = abliterate("worker", "--storage", postgres_url, "--study", "s", "--device", "cpu", *heartbeat)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log
    everything = {t.number: t for t in optuna.load_study(study_name="s", storage=postgres_url).trials}
    assert everything[killed.number].state == TrialState.FAIL
    retries = [t for t in everything.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert done_before <= {t.number for t in trials(postgres_url)}  # nothing finished was lost
    assert len(trials(postgres_url)) >= 5


def test_interrupted_search_resumes_to_n(postgres_url, model_dir):
    args = ["search", "--model", model_dir, "--storage", postgres_url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8, "--seed", 0,
            "--device", "cpu", "--heartbeat", 1, "--grace", 3]
    first = abliterate(*args, "--trials", 12)
    wait_for(lambda: len(trials(postgres_url)) >= 3 if _exists(postgres_url) else False)
    first.send_signal(signal.SIGINT)
    first.wait(timeout=60)
    kept = {t.number for t in trials(postgres_url)}
    assert 3 <= len(kept) < 12
    second = abliterate(*args, "--trials", 12)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log
    assert "resumed study 's'" in log and "feasible Pareto front" in log
    done = trials(postgres_url)
    assert 12 <= len(done) <= 13 and kept <= {t.number for t in done}


def _exists(url):
    try:
        optuna.load_study(study_name="s", storage=url)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["front", "--storage", "mysql://x@y/z"], "error: unsupported storage 'mysql'", 2),
        # An unreachable database is worth retrying later: its own exit status.
        (["front", "--storage", "postgresql+psycopg2://postgres@127.0.0.1:1/x"], "error: cannot reach the database", 3),
        (["worker", "--storage", "STORAGE", "--study", "nope"], "error: no abliterate study named 'nope'", 2),
        (["worker", "--storage", "STORAGE", "--study", "s", "--model", "other/model"], "error: these options contradict the study", 2),
        (["export", "--storage", "STORAGE", "--study", "s", "--trial", "99", "--out", "x"], "error: study 's' has no finished trial 99", 2),
    ],
)
def test_bad_input_is_one_line(postgres_url, model_dir, args, message, status):
    create_or_resume(open_storage(postgres_url), "s", config(model_dir))
    process = abliterate(*[postgres_url if a == "STORAGE" else a for a in args])
    output = process.communicate(timeout=120)[0].strip()
    assert process.returncode == status and output.startswith(message) and len(output.splitlines()) == 1, output


def test_conflicting_settings_on_resume(postgres_url, model_dir):
    storage = open_storage(postgres_url)
    create_or_resume(storage, "s", config(model_dir))
    from ablation.errors import AblationError

    with pytest.raises(AblationError, match="exists with other settings.*kl_cap"):
        create_or_resume(storage, "s", config(model_dir, kl_cap=0.5))
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50))
    assert resumed and study.user_attrs["abliterate"].count('"n_trials": 50') == 1
    # a throughput setting may change too (a study started with the old default batch of 16)
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50, batch_size=16))
    assert resumed and load(storage, "s")[1].batch_size == 16
    with pytest.raises(AblationError, match="exists with other settings.*kl_cap"):
        create_or_resume(storage, "s", config(model_dir, kl_cap=0.5, batch_size=16))


def test_unreachable_database_exits_3_and_the_launcher_waits_it_out(capfd):
    from search.launcher import DATABASE_UNREACHABLE, supervise

    down = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    worker = abliterate("worker", "--storage", down, "--study", "s")
    assert worker.wait(timeout=120) == DATABASE_UNREACHABLE
    start = time.monotonic()
    # No restart budget at all: only the outage patience keeps the worker coming back.
    assert supervise(down, "s", ["cpu"], max_restarts=0, poll=0.2, outage_patience=12) == 1
    assert time.monotonic() - start >= 12
    waits = capfd.readouterr().err.count("database unreachable; starting it again")
    assert waits >= 2


def _restart_postgres():
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=120)


@pytest.mark.disruptive
def test_search_survives_a_postgres_restart(postgres_url, model_dir):
    """Restarts the machine's PostgreSQL under a running search: run alone, with -m disruptive."""
    args = ["search", "--model", model_dir, "--storage", postgres_url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 32, "--batch-size", 8, "--seed", 0,
            "--device", "cpu", "--heartbeat", 1, "--grace", 3, "--trials", 10]
    search = abliterate(*args)
    wait_for(lambda: _exists(postgres_url) and len(trials(postgres_url)) >= 2)
    _restart_postgres()
    log = search.communicate(timeout=600)[0]
    assert search.returncode == 0, log
    assert len(trials(postgres_url)) >= 10


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    """24 trials of the embedded default (the demo's config) run by one in-process worker."""
    import torch

    from search.demo import demo_config
    from search.worker import run_worker

    url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
    create_or_resume(open_storage(url), "s", demo_config(24))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and far faster on a shared CPU
    try:
        run_worker(url, "s", device="cpu", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return optuna.load_study(study_name="s", storage=url)


def test_demo_front_shows_a_trade_off(demo_study):
    """The demo must show what the tool is for: fewer refusals cost more KL, so the front has
    several points, not one edit that removes everything for free."""
    from search.front import feasible_front

    front = sorted(feasible_front(demo_study), key=lambda t: t.values[0])
    assert len({t.values[0] for t in front}) >= 2
    assert front[0].values[1] > front[-1].values[1]  # the fewest refusals at the highest KL


def test_trials_that_cannot_reach_the_front_are_pruned_exactly(demo_study):
    """On the shipped refuser, a trial whose refusals so far already make it dominated stops its
    refusal pass: PRUNED, with its bound, counted towards the trials, and truly dominated."""
    from search.front import feasible_front

    study = demo_study
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert pruned and len(pruned) + len(complete) == 24
    for trial in pruned:
        attrs = trial.user_attrs
        by = complete[attrs["dominated_by"]]
        assert attrs["pruned"] and attrs["feasible"] and by.user_attrs["feasible"]
        assert by.values[1] <= attrs["kl"] and by.values[0] <= attrs["refusal_at_least"]
        assert by.number < trial.number
    assert all(t.state == TrialState.COMPLETE for t in feasible_front(study))
    # the designed starting points ran first, once each
    starts = StudyConfig.from_json(study.user_attrs[CONFIG_ATTR]).starting_points
    assert [bool(t.user_attrs.get("starting_point")) for t in study.trials] == [True] * starts + [False] * (24 - starts)
