"""The launcher and its workers as a user runs them: several workers, a killed one, Ctrl-C and
SIGTERM; real processes on a real PostgreSQL (127.0.0.1:5432) or, as ``abliterate demo`` runs,
on SQLite. The timeout bounds a failure that would otherwise wait out the grace period (600 s) or
hang on a worker left running."""

import os
import signal
import subprocess
import threading

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from test_search import abliterate, children, config, every_trial, halting, read_until, trials

from abliterate.search.study import create_or_resume
from abliterate.storage.rdb import open_storage
from abliterate.storage.tables import CachedArtifact

pytestmark = pytest.mark.timeout(300)
SEARCH = ["search", "--study", "s", "--harmful", "demo-harmful", "--harmless", "demo-harmless", "--split", "4,6,6",
          "--max-new-tokens", 16, "--batch-size", 8, "--device", "cpu", "--grace", 600]


@pytest.fixture
def model_dir(saved_tiny):
    return str(saved_tiny("qwen3"))


@pytest.fixture
def launch():
    """launch(*args, env=...) -> a ``search`` process with stdin open, in its own process group;
    whatever of it is left at the end of the test is killed."""
    started = []

    def run(*args, env=None):
        process = abliterate(*SEARCH, *args, env=env, stdin=subprocess.PIPE, start_new_session=True)
        started.append(process)
        return process

    yield run
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def read_lines(process, text, count):
    """Output of ``process`` up to the ``count``-th line containing ``text``."""
    lines, seen = [], 0
    for line in process.stdout:
        lines.append(line)
        seen += text in line
        if seen == count:
            break
    return "".join(lines)


def rest(process):
    """The remaining output of ``process`` once it ends (its stdin stays open until then: a halted
    worker waits on it and must not be let go by its closing)."""
    out = process.stdout.read()
    process.wait()
    process.stdin.close()
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def claims(url):
    with Session(open_storage(url).engine) as session:
        return [(row.key, row.status) for row in session.query(CachedArtifact)]


def test_a_killed_worker_of_two_is_restarted_and_its_trial_run_at_once(postgres_url, model_dir, launch):
    """``--workers 2`` on one device: each worker is supervised on its own; the one killed in the
    middle of trial 1 is restarted and its trial queued again at once as the same candidate."""
    search = launch("--model", model_dir, "--storage", postgres_url, "--workers", 2, "--trials", 4, "--starting-points", 0,
                    env=halting("sampled@1"))
    log = rest(search)
    assert search.returncode == 0, log
    assert "halt: sampled trial 1" in log
    assert "on cpu was killed by SIGKILL; trial 1 queued again; restarting (1/3)" in log, log
    ready = log.count("): computed here") + log.count("): from the study cache")  # "directions (METHODS): ..."
    assert ready + log.count("already has") == 3, log  # two workers, then the restarted one
    everything = every_trial(postgres_url)
    assert everything[1].state == TrialState.FAIL
    retry = [t for t in everything.values() if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == everything[1].params
    assert len(trials(postgres_url)) == 4 and not trials(postgres_url, states=(TrialState.RUNNING, TrialState.WAITING))


def test_sigterm_to_search_stops_every_worker_and_queues_their_trials_again(postgres_url, model_dir, launch):
    """SIGTERM to the search alone (systemd, ``docker stop``): both workers stop, each trial is
    queued again as the same candidate, one line and status 130."""
    search = launch("--model", model_dir, "--storage", postgres_url, "--workers", 2, "--trials", 4, "--starting-points", 0,
                    env=halting("sampled", "wait"))
    head = read_lines(search, "halt: sampled", 2)
    workers = children(search.pid)
    search.send_signal(signal.SIGTERM)
    log = head + rest(search)
    assert search.returncode == 130, log
    assert log.count("interrupted") == 1 and "Traceback" not in log, log
    assert len(workers) == 2 and not [pid for pid in workers if alive(pid)]
    everything = every_trial(postgres_url)
    failed = {t.number: t for t in everything.values() if t.state == TrialState.FAIL}
    queued = [t for t in everything.values() if t.state == TrialState.WAITING]
    assert len(failed) == 2 and sorted(t.system_attrs["failed_trial"] for t in queued) == sorted(failed)
    assert all(t.params == failed[t.system_attrs["failed_trial"]].params for t in queued)
    assert not trials(postgres_url, states=(TrialState.RUNNING,))


def test_sigterm_while_computing_directions_gives_the_claim_back(postgres_url, model_dir, launch):
    """Stopped while computing the directions: no claim is left ``computing``, so the next search
    computes them at once instead of waiting out the grace period."""
    args = ["--model", model_dir, "--storage", postgres_url, "--trials", 1, "--starting-points", 0]
    search = launch(*args, env=halting("directions", "wait"))
    head = read_until(search, "halt: directions")
    assert len(claims(postgres_url)) == 1
    search.send_signal(signal.SIGTERM)
    log = head + rest(search)
    assert search.returncode == 130 and "Traceback" not in log, log
    assert claims(postgres_url) == []


def test_a_worker_killed_computing_directions_is_replaced_at_once(postgres_url, model_dir, launch):
    """A worker killed while it holds the direction claim: its launcher gives the claim back, and
    the restarted worker computes at once."""
    search = launch("--model", model_dir, "--storage", postgres_url, "--trials", 1, "--starting-points", 0,
                    env=halting("directions", "wait"))
    head = read_until(search, "halt: directions")
    [first] = children(search.pid)
    os.kill(first, signal.SIGKILL)
    head += read_until(search, "halt: directions")  # the restarted worker holds the claim
    search.stdin.write("go\n")
    search.stdin.flush()
    log = head + rest(search)
    assert search.returncode == 0, log
    assert "worker 1 on cpu was killed by SIGKILL; restarting (1/3)" in log and "computed here" in log, log
    assert len(trials(postgres_url)) == 1


def test_ctrl_c_with_two_workers_on_sqlite_leaves_no_trial_running(tmp_path, model_dir, launch):
    """``abliterate demo``'s setting (SQLite, two workers) interrupted by Ctrl-C: no traceback,
    both trials queued again, and the resume runs them at once."""
    args = ["--model", model_dir, "--storage", f"sqlite:///{tmp_path / 's.db'}", "--workers", 2, "--trials", 2,
            "--starting-points", 2]
    search = launch(*args, env=halting("asked", "wait"))
    head = read_lines(search, "halt: asked", 2)
    os.killpg(search.pid, signal.SIGINT)
    log = head + rest(search)
    assert search.returncode == 130, log
    assert log.count("interrupted") == 1 and "Traceback" not in log, log
    url = f"sqlite:///{tmp_path / 's.db'}"
    everything = every_trial(url)
    assert [everything[n].state for n in (0, 1)] == [TrialState.FAIL] * 2
    assert sorted(t.system_attrs["failed_trial"] for t in everything.values() if t.state == TrialState.WAITING) == [0, 1]
    assert not trials(url, states=(TrialState.RUNNING,))
    resumed = launch(*args)
    log = rest(resumed)
    assert resumed.returncode == 0, log
    done = trials(url)
    assert sorted(t.system_attrs["failed_trial"] for t in done) == [0, 1]
    assert [t.params for t in sorted(done, key=lambda t: t.system_attrs["failed_trial"])] == [everything[0].system_attrs["fixed_params"],
                                                                                              everything[1].system_attrs["fixed_params"]]


def test_an_interrupt_inside_a_sqlite_query_still_queues_the_trial_again(tmp_path, model_dir, monkeypatch):
    """Ctrl-C lands while a query runs (here: as it returns): the interrupted connection keeps
    SQLite locked while the frames holding its cursor live, and re-queueing the trial then met
    "database is locked" after 30 s. It must succeed at once, and the worker stop with the interrupt."""
    from abliterate.search import halt
    from abliterate.search.interrupts import interrupted_once
    from abliterate.search.worker import run_worker

    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(open_storage(url), "s", config(model_dir, n_trials=2, starting_points=0))
    sampled = threading.Event()
    monkeypatch.setattr(halt, "at", lambda point, number=None: point == "sampled" and sampled.set())

    def interrupt(connection, cursor, statement, *args):
        if sampled.is_set() and statement.lstrip().startswith("SELECT") and threading.current_thread() is threading.main_thread():
            sampled.clear()
            signal.raise_signal(signal.SIGINT)

    event.listen(Engine, "after_cursor_execute", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), interrupted_once():
            run_worker(url, "s", device="cpu", log=lambda line: None)
    finally:
        event.remove(Engine, "after_cursor_execute", interrupt)
    everything = every_trial(url)
    assert everything[0].state == TrialState.FAIL
    [queued] = [t for t in everything.values() if t.state == TrialState.WAITING]
    assert queued.system_attrs["failed_trial"] == 0 and queued.params == everything[0].params
    assert optuna.load_study(study_name="s", storage=url).get_trials(states=(TrialState.RUNNING,)) == []
