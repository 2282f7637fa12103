"""The search service with real worker processes on a real PostgreSQL (127.0.0.1:5432)."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from abliterate.search.study import StudyConfig, create_or_resume, load
from abliterate.storage.rdb import open_storage
from abliterate.storage.records import BASELINE, CONFIG

# A short heartbeat; the grace period stays long unless a test needs a dead worker's trial taken
# over: a live worker starved of CPU on a loaded machine can miss a short one.
FAST = dict(n_trials=8, max_new_tokens=16, batch_size=8, seed=0, heartbeat_interval=1)


@pytest.fixture
def model_dir(saved_tiny):
    return str(saved_tiny("qwen3"))


def config(model_dir, **options):
    return StudyConfig.split(model_dir, "demo-harmful", "demo-harmless", (4, 6, 6), **(FAST | options))


def abliterate(*args, env=None, **popen):
    return subprocess.Popen([sys.executable, "-m", "abliterate", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **popen)


def halting(point, action="kill"):
    """The environment that makes a worker stop itself at ``point`` (see search.halt)."""
    return {"ABLITERATE_HALT": point, "ABLITERATE_HALT_ACTION": action}


def read_until(process, text):
    """Lines of ``process`` up to the first containing ``text``; all of them if it ends first."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


def trials(url, name="s", states=(TrialState.COMPLETE,)):
    return optuna.load_study(study_name=name, storage=url).get_trials(states=states)


def every_trial(url, name="s"):
    return {t.number: t for t in optuna.load_study(study_name=name, storage=url).trials}


def worker(url, env=None, **popen):
    """A worker process; it beats and reaps by the study's heartbeat settings."""
    return abliterate("worker", "--device", "cpu", "--storage", url, "--study", "s", env=env, **popen)


def test_two_workers_share_one_study(postgres_url, model_dir):
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=6))
    # The first worker holds its first trial (heartbeat running) until the second has finished
    # one: both surely work.
    first = worker(postgres_url, halting("sampled@0", "wait"), stdin=subprocess.PIPE)
    head = read_until(first, "halt: sampled trial 0")
    second = worker(postgres_url)
    head2 = read_until(second, "refusal")
    logs = [head + first.communicate("go\n")[0], head2 + second.communicate()[0]]  # a line releases the first
    assert [w.returncode for w in (first, second)] == [0, 0], logs
    done = trials(postgres_url, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 6  # never one more: the last trial is asked by one worker only
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert not trials(postgres_url, states=(TrialState.FAIL, TrialState.RUNNING))
    assert sum("computed here" in log for log in logs) == 1 and sum("from the study cache" in log for log in logs) == 1
    assert all({"kl", "feasible", "seconds_total"} <= set(t.user_attrs) for t in done)


def test_the_last_trial_is_taken_once(postgres_url, model_dir):
    """Two workers, one trial to go: the second waits on the first's trial instead of asking another."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=1, starting_points=0))
    first = worker(postgres_url, halting("sampled@0", "wait"), stdin=subprocess.PIPE)
    read_until(first, "halt: sampled trial 0")
    second = worker(postgres_url)
    waited = read_until(second, "waiting:")
    logs = [first.communicate("go\n")[0], waited + second.communicate()[0]]
    assert [w.returncode for w in (first, second)] == [0, 0], logs
    assert "waiting: 1 running trial(s) would make 1" in logs[1]
    assert [(t.number, t.state) for t in every_trial(postgres_url).values()] == [(0, TrialState.COMPLETE)]


def test_killed_worker_trial_is_retried_with_same_params(postgres_url, model_dir):
    # No designed starting points: the killed trial's params come from the sampler.
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=3, starting_points=0, grace_period=2))
    first = worker(postgres_url, halting("sampled@1"))
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL and "halt: sampled trial 1" in log, log
    killed = every_trial(postgres_url)[1]
    assert killed.state == TrialState.RUNNING and killed.user_attrs == {}
    second = worker(postgres_url)
    log = second.communicate()[0]
    assert second.returncode == 0, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.COMPLETE  # nothing finished was lost
    assert everything[1].state == TrialState.FAIL
    retries = [t for t in everything.values() if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert len(trials(postgres_url)) == 3 and not trials(postgres_url, states=(TrialState.RUNNING,))


def test_trial_killed_before_its_first_heartbeat_is_reaped(postgres_url, model_dir):
    """Killed right after asking (RUNNING, no heartbeat yet): failed after the grace period, and
    the designed point it was is queued again whole."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=2, starting_points=1, grace_period=2))
    first = worker(postgres_url, halting("asked@0"))
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL and "halt: asked trial 0" in log, log
    zombie = every_trial(postgres_url)[0]
    assert zombie.state == TrialState.RUNNING and zombie.params == {}
    second = worker(postgres_url)
    log = second.communicate()[0]
    assert second.returncode == 0, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.FAIL
    assert not trials(postgres_url, states=(TrialState.RUNNING, TrialState.WAITING))
    retry = [t for t in everything.values() if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == zombie.system_attrs["fixed_params"] and retry[0].user_attrs["starting_point"]
    assert len(trials(postgres_url)) == 2


def test_trial_killed_while_sampling_is_not_retried_half_new(postgres_url, model_dir):
    """Killed with part of its params recorded: failed, not re-queued (a copy would sample the rest
    anew, another candidate under its name); a new trial takes its place."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=2, starting_points=0, grace_period=2))
    first = worker(postgres_url, halting("sampling@0"))
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL and "halt: sampling trial 0" in log, log
    assert 0 < len(every_trial(postgres_url)[0].params) < 10
    second = worker(postgres_url)
    log = second.communicate()[0]
    assert second.returncode == 0, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.FAIL
    assert not [t for t in everything.values() if t.system_attrs.get("failed_trial") == 0]
    assert len(trials(postgres_url)) == 2 and not trials(postgres_url, states=(TrialState.RUNNING, TrialState.WAITING))


def test_interrupted_search_resumes_to_n(postgres_url, model_dir):
    args = ["search", "--model", model_dir, "--storage", postgres_url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8, "--seed", 0,
            "--device", "cpu", "--heartbeat", 1, "--grace", 2, "--trials", 5]
    # The worker stops after its third trial is stored; the search is interrupted there.
    first = abliterate(*args, env=halting("told@2", "wait"), stdin=subprocess.PIPE)
    head = read_until(first, "halt: told trial 2")
    first.send_signal(signal.SIGINT)
    log = head + first.communicate()[0]
    assert first.returncode == 130, log
    kept = {t.number for t in trials(postgres_url)}
    assert kept == {0, 1, 2} and not trials(postgres_url, states=(TrialState.RUNNING,))
    second = abliterate(*args)
    log = second.communicate()[0]
    assert second.returncode == 0, log
    assert "resumed study 's'" in log and "feasible Pareto front" in log
    done = trials(postgres_url)
    assert len(done) == 5 and kept <= {t.number for t in done}


def test_the_base_model_is_measured_once_and_shown_beside_the_front(postgres_url, model_dir):
    """The worker that computes the directions measures the base model's refusals first; killed
    right after storing them (before the directions), the worker started in its place computes
    the directions without measuring again. Start-up says what it does, with the seconds spent."""
    import json
    import re


    args = ["search", "--model", model_dir, "--storage", postgres_url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8, "--seed", 0,
            "--device", "cpu", "--heartbeat", 1, "--grace", 2, "--trials", 2]
    search = abliterate(*args, env=halting("baseline"))
    log = search.communicate()[0]
    assert search.returncode == 0, log
    assert log.count("halt: baseline") == 1 and log.count("measuring the base model's refusals on the 6 evaluation prompts") == 1, log
    assert log.count("computed here") == 1  # by the worker started in the killed one's place
    for step in ("loading ", "computing the directions (mean-projected) from 4 harmful and 4 harmless prompts",
                 "5 designed starting points queued", "the base model's log-probs on the 6 harmless evaluation prompts", "ready: running trials"):
        assert re.search(r"\[\s*\d+ s\] " + re.escape(step), log), (step, log)
    base = load(open_storage(postgres_url), "s")[0].user_attrs[BASELINE]
    assert base["prompts"] == 6 and 0 <= base["refusal"] <= 1 and set(base) >= {"refusal_rate", "degenerate_rate", "seconds"}
    assert f"base model (unedited) on the 6 evaluation prompts: refusal {base['refusal']:.3f}" in log
    front_rows = [line.split() for line in log.splitlines() if line.split()[:1] == ["base"]]
    assert front_rows == [["base", f"{base['refusal']:.3f}", "0", f"{base['refusal_rate']:.0%}", f"{base['degenerate_rate']:.0%}"]]
    front = abliterate("front", "--storage", postgres_url, "--study", "s", "--json")
    rows = json.loads(front.communicate()[0])
    assert rows and all(row["base"] == base for row in rows)

    # On the CPU, once a trial has finished, what the rest costs and how to spend less, once.
    resumed = abliterate(*args[:-1], 4, env=halting("sampled@2", "wait"), stdin=subprocess.PIPE)
    head = read_until(resumed, "on the CPU a trial took")
    log = head + resumed.communicate("go\n")[0]
    assert resumed.returncode == 0, log
    per_trial = sum(t.user_attrs["seconds_total"] for t in trials(postgres_url)[:2]) / 2
    took = f"{per_trial:.0f}" if per_trial >= 10 else f"{per_trial:.1f}"
    assert f"on the CPU a trial took {took} s (mean of 2): the 2 to go take about" in log
    assert log.count("on the CPU a trial took") == 1 and "measuring" not in log


def test_ctrl_c_requeues_the_running_trial_and_says_so_once(postgres_url, model_dir):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) in the middle of a trial:
    one line, exit 130, and the trial queued again at once as the same candidate."""
    args = ["search", "--model", model_dir, "--storage", postgres_url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8,
            "--device", "cpu", "--trials", 4, "--starting-points", 0]
    search = abliterate(*args, env=halting("sampled@1", "wait"), stdin=subprocess.PIPE, start_new_session=True)
    head = read_until(search, "halt: sampled trial 1")
    os.killpg(search.pid, signal.SIGINT)
    log = head + search.communicate()[0]
    assert search.returncode == 130, log
    assert log.count("interrupted") == 1 and "Traceback" not in log, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.COMPLETE and everything[1].state == TrialState.FAIL
    queued = [t for t in everything.values() if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].system_attrs["failed_trial"] == 1 and queued[0].params == everything[1].params
    assert not trials(postgres_url, states=(TrialState.RUNNING,))


def children(pid):
    """Processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except OSError:
            pass  # ended meanwhile
    return found


def test_the_database_password_is_neither_printed_nor_in_argv(postgres_url, model_dir):
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@")  # trust authentication ignores it
    args = ["search", "--model", model_dir, "--storage", url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8,
            "--device", "cpu", "--trials", 1]
    search = abliterate(*args, env=halting("sampled@0", "wait"), stdin=subprocess.PIPE)
    head = read_until(search, "halt: sampled trial 0")
    workers = children(search.pid)
    argv = [open(f"/proc/{pid}/cmdline", "rb").read() for pid in workers]
    log = head + search.communicate("go\n")[0]
    assert search.returncode == 0, log
    assert workers and all(b"worker" in a and b"s3cret" not in a for a in argv), argv
    assert "s3cret" not in log and "created study 's' in postgresql+psycopg2://postgres:***@" in log
    assert "browse it: abliterate dashboard --storage postgresql+psycopg2://postgres:***@" in log


@pytest.mark.parametrize("secret", ["?password=s3cret-pw", "@ss-s3cret"])
def test_a_password_parameter_or_one_holding_an_at_is_never_printed(postgres_url, model_dir, secret):
    """Both forms reach the database (trust authentication ignores the password) and are hidden
    in every line that shows the URL."""
    url = postgres_url + secret if secret.startswith("?") else postgres_url.replace("postgres@", f"postgres:p{secret}@")
    search = abliterate("search", "--model", model_dir, "--storage", url, "--study", "s", "--harmful", "demo-harmful",
                        "--harmless", "demo-harmless", "--split", "4,6,6", "--workers", 0)
    log = search.communicate()[0]
    assert search.returncode == 0, log
    assert "s3cret" not in log, log
    shown = postgres_url.replace("postgres@", "postgres:***@") if secret.startswith("@") else postgres_url + "?password=***"
    assert f"created study 's' in {shown}: 0/100 finished" in log and f"browse it: abliterate dashboard --storage {shown}" in log


@pytest.mark.parametrize(
    "args, message, status",
    [
        (["front", "--storage", "mysql://x@y/z"], "error: unsupported storage 'mysql'", 2),
        # An unreachable database is worth retrying later: its own exit status.
        (["front", "--storage", "postgresql+psycopg2://postgres@127.0.0.1:1/x"], "error: cannot reach the database", 3),
        (["worker", "--storage", "STORAGE", "--study", "nope"], "error: no abliterate study named 'nope'", 2),
        (["worker", "--storage", "STORAGE", "--study", "s", "--model", "other/model"], "error: these options contradict the study", 2),
        # The study's heartbeat settings hold for every worker: one that would judge others' trials
        # by a shorter grace period is refused.
        (["worker", "--storage", "STORAGE", "--study", "s", "--grace", "5"],
         "error: these options contradict the study: grace_period: study has 600, you gave 5", 2),
        (["export", "--storage", "STORAGE", "--study", "s", "--trial", "99", "--out", "x"], "error: study 's' has no finished trial 99", 2),
    ],
)
def test_bad_input_is_one_line(postgres_url, model_dir, args, message, status):
    create_or_resume(open_storage(postgres_url), "s", config(model_dir))
    process = abliterate(*[postgres_url if a == "STORAGE" else a for a in args])
    output = process.communicate()[0].strip()
    assert process.returncode == status and output.startswith(message) and len(output.splitlines()) == 1, output


def test_conflicting_settings_on_resume(postgres_url, model_dir):
    storage = open_storage(postgres_url)
    create_or_resume(storage, "s", config(model_dir))
    from abliterate.ablation.errors import AblationError

    with pytest.raises(AblationError, match="exists with other settings.*kl_cap"):
        create_or_resume(storage, "s", config(model_dir, kl_cap=0.5))
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50))
    assert resumed and study.user_attrs["abliterate"].count('"n_trials": 50') == 1
    # a throughput setting may change too (a study started with the old default batch of 16)
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50, batch_size=16))
    assert resumed and load(storage, "s")[1].batch_size == 16
    # and so may the screen: it decides which trials get a refusal pass, never what one measures
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50, batch_size=16, screen="record"))
    assert resumed and load(storage, "s")[1].screen == "record"
    study, resumed = create_or_resume(storage, "s", config(model_dir, n_trials=50, batch_size=16, screen="prune", screen_margin=0.1))
    assert resumed and (load(storage, "s")[1].screen, load(storage, "s")[1].screen_margin) == ("prune", 0.1)
    with pytest.raises(AblationError, match="exists with other settings.*kl_cap"):
        create_or_resume(storage, "s", config(model_dir, kl_cap=0.5, batch_size=16))


def test_heartbeat_settings_are_the_study_s(postgres_url, model_dir):
    """Whoever fails stale trials of a study (a worker, a promoter) judges them by the study's grace
    period, whatever its own storage was opened with; a study stored before these settings were
    kept has the old defaults."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, heartbeat_interval=5, grace_period=50))
    storage = open_storage(postgres_url)
    assert (storage.heartbeat_interval, storage.grace_period) == (60, 600)
    load(storage, "s")
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 50)
    import json

    stored = json.loads(config(model_dir).to_json())
    del stored["heartbeat_interval"], stored["grace_period"]
    old = StudyConfig.from_json(json.dumps(stored))
    assert (old.heartbeat_interval, old.grace_period) == (60, 600)


def test_a_worker_whose_trial_was_failed_under_it_drops_it_and_goes_on(postgres_url, model_dir):
    """A worker frozen past the grace period (SIGSTOP, as a suspended machine) finds its trial failed
    by another worker and retried: one line, no traceback, and it goes on; nothing counts twice."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=2, starting_points=0, grace_period=2))
    first = worker(postgres_url, halting("sampled@0", "wait"), stdin=subprocess.PIPE)
    head = read_until(first, "halt: sampled trial 0")
    first.send_signal(signal.SIGSTOP)
    try:
        second = worker(postgres_url)  # fails trial 0 once it has no heartbeat for 2 s, runs its retry
        log = second.communicate()[0]
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 0, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.FAIL
    log = head + first.communicate("go\n")[0]
    assert first.returncode == 0 and "Traceback" not in log, log
    assert log.count("trial 0 was failed by another worker") == 1, log
    everything = every_trial(postgres_url)
    assert everything[0].state == TrialState.FAIL and everything[0].user_attrs == {}  # its late figures are not written
    retries = [t for t in everything.values() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == everything[0].params
    assert len(trials(postgres_url, states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    assert not trials(postgres_url, states=(TrialState.RUNNING, TrialState.WAITING))


def test_a_retry_starts_clean(postgres_url, model_dir):
    """A trial killed after writing its figures, before it was told, is retried with its params and
    where they came from, and nothing of the killed attempt (figures, constraint)."""
    create_or_resume(open_storage(postgres_url), "s", config(model_dir, n_trials=1, starting_points=1, grace_period=2))
    first = worker(postgres_url, halting("recorded@0"))
    log = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL and "halt: recorded trial 0" in log, log
    killed = every_trial(postgres_url)[0]
    assert killed.state == TrialState.RUNNING and "kl" in killed.user_attrs and "constraints:kl_over_cap" in killed.system_attrs
    # A figure that only a pruned attempt writes: the retry, alone in the study, is not pruned.
    open_storage(postgres_url).set_trial_user_attr(killed._trial_id, "refusal_at_least", 0.5)
    second = worker(postgres_url)
    log = second.communicate()[0]
    assert second.returncode == 0 and "already set" not in log, log  # its own constraint is not discarded
    retry = [t for t in every_trial(postgres_url).values() if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    assert retry[0].user_attrs["starting_point"] and "refusal_at_least" not in retry[0].user_attrs
    assert retry[0].user_attrs["worker"] != killed.user_attrs["worker"]


def test_unreachable_database_exits_3_and_the_launcher_waits_it_out(capfd):
    from abliterate.search.launcher import DATABASE_UNREACHABLE, supervise

    down = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    worker = abliterate("worker", "--storage", down, "--study", "s")
    assert worker.wait() == DATABASE_UNREACHABLE
    start = time.monotonic()
    # No restart budget at all: only the outage patience keeps the worker coming back.
    assert supervise(down, "s", ["cpu"], max_restarts=0, poll=0.2, outage_patience=12) == 1
    assert time.monotonic() - start >= 12
    # With no restart budget, even one start-again proves the outage path; how many fit in the
    # patience depends on how fast a worker starts, which a loaded machine decides.
    waits = capfd.readouterr().err.count("database unreachable; starting it again")
    assert waits >= 1


def read_until_all(process, *texts):
    """Lines of ``process`` up to the one where the last of ``texts`` has appeared."""
    lines, missing = [], set(texts)
    for line in process.stdout:
        lines.append(line)
        missing -= {text for text in missing if text in line}
        if not missing:
            break
    return "".join(lines)


def release(process):
    """Let a worker waiting at a halt point go on, and pass every later one."""
    process.stdin.write("go\n")
    process.stdin.close()


def test_a_postgres_restart_under_two_busy_workers_loses_nothing(private_postgres, model_dir):
    """PostgreSQL stopped while two workers are mid-trial, and started again after both have met
    the outage: they wait for it, keep their trials beating, and finish the study exactly."""
    url = private_postgres.url
    args = ["search", "--model", model_dir, "--storage", url, "--study", "s", "--harmful", "demo-harmful",
            "--harmless", "demo-harmless", "--split", "4,6,6", "--max-new-tokens", 16, "--batch-size", 8, "--seed", 0,
            "--device", "cpu", "--heartbeat", 1, "--grace", 120, "--trials", 2, "--starting-points", 2]
    # Its one worker and a second one halt at a trial's sampled params and again once its
    # figures are written (stdin: a line, or its end, lets them on).
    halts = halting("sampled,recorded", "wait")
    search = abliterate(*args, env=halts, stdin=subprocess.PIPE)
    logs = [read_until(search, "halt: sampled trial")]
    second = worker(url, halts, stdin=subprocess.PIPE)
    logs.append(read_until(second, "halt: sampled trial"))
    private_postgres.stop()
    for process in (search, second):
        process.stdin.write("go\n")
        process.stdin.flush()
    # Both meet the outage: each worker while it runs its trial, the search at its progress tick.
    logs[0] += read_until_all(search, "database unreachable (", "database unreachable; the workers wait")
    logs[1] += read_until(second, "database unreachable (")
    private_postgres.start()
    logs[0] += read_until(search, "halt: recorded trial")
    logs[1] += read_until(second, "halt: recorded trial")
    # Both trials are held again, after the restart: only their heartbeat threads write now.
    storage = open_storage(url)
    running = [t for t in every_trial(url).values() if t.state == TrialState.RUNNING]
    assert len(running) == 2, logs
    with storage.engine.connect() as connection:
        restarted = connection.execute(sqlalchemy.text("select now()")).scalar()

    def beaten_since_restart():
        with storage.engine.connect() as connection:
            return connection.execute(sqlalchemy.text("select count(*) from trial_heartbeats where heartbeat > :t"),
                                      {"t": restarted.replace(tzinfo=None)}).scalar()

    deadline = time.monotonic() + 60  # beats come every second; a dead heartbeat thread never gets here
    while beaten_since_restart() < 2:
        assert search.poll() is None and second.poll() is None and time.monotonic() < deadline, logs
        time.sleep(0.2)
    for process in (search, second):
        release(process)
    logs = [log + process.stdout.read() for log, process in zip(logs, (search, second))]
    search.wait()
    second.wait()
    assert [search.returncode, second.returncode] == [0, 0], logs
    assert all("Traceback" not in log and "database reachable again" in log for log in logs), logs
    everything = every_trial(url)
    assert all(everything[t.number].state == TrialState.COMPLETE for t in running), logs  # the trials held through it
    assert len(trials(url, states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    assert not trials(url, states=(TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    """24 trials of the embedded default (the demo's config) run by one in-process worker."""
    import torch

    from abliterate.search.demo import demo_config
    from abliterate.search.worker import run_worker

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
    from abliterate.search.front import feasible_front

    front = sorted(feasible_front(demo_study), key=lambda t: t.values[0])
    assert len({t.values[0] for t in front}) >= 2
    assert front[0].values[1] > front[-1].values[1]  # the fewest refusals at the highest KL


def test_trials_that_cannot_reach_the_front_are_pruned_exactly(demo_study):
    """On the shipped refuser, a trial whose refusals so far already make it dominated stops its
    refusal pass: PRUNED, with its bound, counted towards the trials, and truly dominated."""
    from abliterate.search.front import feasible_front

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
    starts = StudyConfig.from_json(study.user_attrs[CONFIG]).starting_points
    assert [bool(t.user_attrs.get("starting_point")) for t in study.trials] == [True] * starts + [False] * (24 - starts)


def test_measured_starts_are_placed_where_the_study_records(tmp_path, model_dir):
    """With measured_starts, the worker measures where the layers write the refusal direction,
    records it with the study, and the designed first trials are exactly the points placed there."""
    from abliterate.search.space import starting_points
    from abliterate.search.worker import run_worker
    from abliterate.storage.records import STARTS

    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(open_storage(url), "s", config(model_dir, n_trials=2, starting_points=2, measured_starts=True))
    said = []
    assert run_worker(url, "s", device="cpu", log=said.append) == 2  # trials run
    study, stored = load(open_storage(url), "s")
    starts = study.user_attrs[STARTS]
    assert len(starts["writing"]) == 2 and 0 <= starts["writing"][0] <= 1
    placed = starting_points(stored.space, starts["strongest"], 2, tuple(starts["writing"]))
    assert [t.params for t in study.trials] == placed
    assert placed != starting_points(stored.space, starts["strongest"], 2)  # the tiny model writes around 0.47, not 0.6
    assert any("the layers write the refusal direction around" in line for line in said)
