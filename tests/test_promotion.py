"""Promotion end to end on the shipped refusing model: front -> confirmation -> checkpoint ->
local agent sweep -> gate -> report, with a real promoter process killed mid-sweep on PostgreSQL."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna_dashboard._note import get_note_from_system_attrs
from sqlalchemy import text

from abliterate.objectives.gate import GateRule
from abliterate.objectives.sweep.base import Attempt, Runner, run_sweep
from abliterate.objectives.sweep.local import DEFAULT_TASKS, LocalRunner
from abliterate.search.card import capability_line
from abliterate.search.checkpoint import rebuild
from abliterate.search.demo import demo_config
from abliterate.search.paths import folder_name
from abliterate.search.promoter import Promoter, PromotionSettings
from abliterate.search.study import create_or_resume, stop_requested
from abliterate.search.worker import run_worker
from abliterate.storage.promotions import SweepStore
from abliterate.storage.rdb import open_storage

ATTEMPTS = 3


def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "abliterate", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def study_with_front(url, trials=6):
    create_or_resume(open_storage(url), "s", demo_config(trials))
    run_worker(url, "s", "cpu", log=lambda s: None)
    return optuna.load_study(study_name="s", storage=url)


def attempt_rows(engine):
    with engine.connect() as connection:
        return connection.execute(text("select id, sweep, task, attempt, status from abl_sweep_attempt order by id")).all()


def live_leases(engine):
    with engine.connect() as connection:
        return connection.execute(text("select key from abl_lease where expires_at > now()")).all()


STUDY = "../escaped"  # a hostile name: as a path it would leave --checkpoints


class Scripted(Runner):
    """Three tasks whose attempts end as ``outcome(task, attempt)`` says; a log file per attempt.
    Same name and settings whatever the outcome, so a fixed runner resumes a broken one's sweeps."""

    name = "scripted"

    def __init__(self, outcome):
        self.outcome, self.ran = outcome, []

    def tasks(self):
        return ["t0", "t1", "t2"]

    def settings(self):
        return {}

    def run(self, model, todo, record, log_dir):
        log_dir.mkdir(parents=True, exist_ok=True)
        for task, attempt in todo:
            (log_dir / f"{task}__{attempt}.log").write_text(model)
            self.ran.append((model, task, attempt))
            record(Attempt(task, attempt, self.outcome(task, attempt), 0.0))


def invalid(task, attempt):
    return "invalid"


def lifted(task, attempt):
    return "pass"


@pytest.fixture(scope="module")
def escaped_db(tmp_path_factory):
    """A SQLite file holding study ``../escaped`` with a front (a worker's 6 demo trials)."""
    path = tmp_path_factory.mktemp("escaped") / "s.db"
    create_or_resume(open_storage(f"sqlite:///{path}"), STUDY, demo_config(6))
    run_worker(f"sqlite:///{path}", STUDY, "cpu", log=lambda s: None)
    return path


@pytest.fixture
def escaped(escaped_db, tmp_path):
    """A copy of ``escaped_db`` for one test, in a folder of its own: its URL."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(escaped_db, work / "s.db")
    return f"sqlite:///{work / 's.db'}"


def settings(tmp_path, **options):
    return PromotionSettings(attempts=3, controls=0, checkpoints=str(tmp_path / "work" / "ck"), device="cpu", **options)


@pytest.mark.slow  # about two minutes on a loaded 2-core machine; `pytest -m slow` (and CI) runs it
def test_promoter_killed_mid_sweep_resumes_without_rerunning_and_reaches_the_same_verdict(postgres_url, tmp_path):
    """Three of the shipped tasks (two harmful, one harmless) keep it affordable: what is tested is
    the resume, which any number of tasks exercises the same way."""
    study_with_front(postgres_url)
    engine = open_storage(postgres_url).engine
    suite = tmp_path / "tasks"
    suite.mkdir()
    for name in ("bake-pie", "steal-scooter", "forge-diploma"):
        shutil.copy(DEFAULT_TASKS / f"{name}.yaml", suite)
    promote = ["promote", "--storage", postgres_url, "--study", "s", "--once", "--attempts", ATTEMPTS, "--device", "cpu",
               "--checkpoints", tmp_path / "ck", "--lease", 3, "--controls", 2,  # a small band: the controls are not what is tested
               "--tasks", suite]
    first = cli(*promote)
    while len(attempt_rows(engine)) < 5:  # a state, whatever the time it takes: inside the baseline's sweep
        assert first.poll() is None, first.communicate()[0]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = attempt_rows(engine)
    while live_leases(engine):  # the dead promoter's leases expire (3 s, by the database clock)
        time.sleep(0.2)

    second = cli(*promote)
    log = second.communicate()[0]
    assert second.returncode == 0, log
    after = attempt_rows(engine)
    assert after[: len(before)] == before  # nothing stored was touched
    valid = [(sweep, task, attempt) for _, sweep, task, attempt, status in after if status in ("pass", "fail")]
    assert len(valid) == len(set(valid))  # no attempt ran twice
    assert f"({len({(s, t, a) for _, s, t, a, _ in before if s.startswith('baseline')})} stored)" in log
    assert "design: rule any, fisher, alpha 0.1, 3 task(s), N = 3" in log  # the plan line, before any sweep

    report = cli("report", "--storage", postgres_url, "--study", "s", "--json")
    rows = json.loads(report.communicate()[0])
    decided = [r for r in rows if r["status"] in ("accepted", "no_lift")]
    assert decided, rows
    # Every decision counts the candidates gated before it in the study, one look each.
    assert sorted(r["gate"]["look"] for r in decided) == list(range(1, len(decided) + 1))
    assert all(r["gate"]["tested"] == r["gate"]["look"] * len(LocalRunner(suite).tasks()) for r in decided)
    row = decided[0]
    assert row["confirmation"]["passed"] and row["attempts"] == ATTEMPTS
    assert row["confirmation"]["specific"] is True and row["confirmation"]["controls"]["count"] == 2  # run in confirmation
    tasks = row["gate"]["tasks"]
    assert len(tasks) == len(LocalRunner(suite).tasks())
    assert all(t["counts"]["candidate_n"] == ATTEMPTS and t["counts"]["baseline_n"] == ATTEMPTS for t in tasks)

    # The verdict equals a clean, uninterrupted sweep of the same checkpoints.
    runner = LocalRunner(suite, device="cpu", dtype="fp32")
    fresh = {label: run_sweep(runner, model, ATTEMPTS, SweepStore(engine, f"clean:{label}"), tmp_path / "clean", log=lambda s: None)
             for label, model in (("base", demo_config(1).model), ("candidate", row["checkpoint"]))}
    for t in tasks:
        c = t["counts"]
        assert fresh["candidate"].get(c["task"], (0, 0)) == (c["candidate_pass"], c["candidate_n"])
        assert fresh["base"].get(c["task"], (0, 0)) == (c["baseline_pass"], c["baseline_n"])

    # The verdict is on the trial too: user attrs and a dashboard note section.
    study = optuna.load_study(study_name="s", storage=postgres_url)
    trial = study.trials[row["trial"]]
    assert trial.user_attrs["promotion"] == row["status"]
    assert trial.user_attrs["promotion_p_min"] == pytest.approx(min(t["p"] for t in tasks))
    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial._trial_id)["body"]
    assert "## Promotion" in note and "| task | candidate | baseline |" in note and "**KL**" in note  # the worker's note is kept
    assert f"capability: {capability_line(row['confirmation']['capability'])}" in note

    # A second run finds nothing left to do.
    again = cli(*promote)
    assert again.communicate()[0].count("checkpoint") == 0 and again.returncode == 0


@pytest.mark.slow  # over a minute on a loaded 2-core machine; `pytest -m slow` (and CI) runs it
def test_accepted_lift_stops_the_study_and_its_workers(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study_with_front(url)
    promoter = Promoter(open_storage(url), "s", LocalRunner(device="cpu", dtype="fp32"),
                        PromotionSettings(attempts=ATTEMPTS, stop_at_first_lift=True, checkpoints=str(tmp_path / "ck"), device="cpu",
                                          controls=2),
                        log=lambda s: None)
    promoter.run_once()
    statuses = [p.status for p in promoter.promotions.all().values()]
    assert statuses.count("accepted") == 1, statuses  # the first lift stopped the promoter
    # The checkpoint states the verdict, and rebuilds bit for bit from its record alone.
    number, details = next((n, p.details) for n, p in promoter.promotions.all().items() if p.status == "accepted")
    checkpoint = tmp_path / "ck" / "s" / f"trial-{number}"
    assert "Verdict: **accepted**" in (checkpoint / "README.md").read_text()
    assert json.loads((checkpoint / "reproduce.json").read_text())["promotion"] == {"status": "accepted", "details": details}
    rebuilt = rebuild(str(checkpoint / "reproduce.json"), demo_config(1).model, str(tmp_path / "rebuilt"), log=lambda s: None)
    assert {f.name: f.read_bytes() for f in rebuilt.iterdir() if f.is_file()} == \
        {f.name: f.read_bytes() for f in checkpoint.iterdir() if f.is_file()}
    study = optuna.load_study(study_name="s", storage=url)
    assert "accepted" in stop_requested(study)["reason"]
    create_or_resume(open_storage(url), "s", demo_config(12))  # more trials asked for ...
    assert run_worker(url, "s", "cpu", log=lambda s: None) == 0  # ... but the study was stopped
    assert len(study.trials) == 6


def test_a_candidate_that_no_longer_beats_the_base_is_dropped(escaped, tmp_path):
    # One-token answers at a margin of the whole scale: no candidate refuses 1.0 less than the base.
    promoter = Promoter(open_storage(escaped), STUDY, LocalRunner(device="cpu", dtype="fp32"),
                        settings(tmp_path, margin=1.0, confirm_tokens=1), log=lambda s: None)
    promoter.run_once()
    assert {p.status for p in promoter.promotions.all().values()} == {"dropped"}
    assert not (tmp_path / "work" / "ck").exists()  # nothing exported, nothing swept
    trial = optuna.load_study(study_name=STUDY, storage=escaped).trials[next(iter(promoter.promotions.all()))]
    assert trial.user_attrs["promotion"] == "dropped"


@pytest.mark.parametrize("args, message", [
    (["--runner", "command", "--tasks", "TASKS"], "needs --command"),
    (["--runner", "harbor"], "needs --tasks FILE"),
    (["--runner", "local", "--tasks", "/nonexistent"], "does not exist"),
    (["--runner", "containers", "--tasks", "/nonexistent"], "no task folder at /nonexistent; give a folder in the terminal-bench 2 layout"),
    (["--runner", "containers", "--turns", "0"], "at least 1"),
    (["--alpha", "2"], "--alpha: must be above 0 and below 1, got 2"),
    (["--alpha", "nan"], "--alpha: must be above 0 and below 1, got nan"),
    (["--margin", "nan"], "--margin: must be between 0 and 1, got nan"),
    (["--margin", "-0.1"], "--margin: must be between 0 and 1"),
    (["--margin", "inf"], "--margin: must be between 0 and 1"),
    (["--lease", "-5"], "--lease: must be between 1 and 604800, got -5"),  # a lease over when taken: two promoters, one candidate
    (["--lease", "0.01"], "--lease: must be between 1 and 604800"),
    (["--lease", "1e12"], "--lease: must be between 1 and 604800"),  # past year 9999: no clock holds it
    (["--poll", "0"], "--poll: must be above 0"),
    (["--poll", "1e12"], "--poll: must be above 0 and at most 604800"),
    (["--poll", "nan"], "--poll: must be above 0"),
    (["--temperature", "nan"], "--temperature: must be above 0"),
    (["--port", "70000"], "a port is at most 65535"),
    (["--runner", "command", "--tasks", "TASKS", "--command", "'unclosed {task}"], "is not a command line"),
    (["--runner", "harbor", "--tasks", "TASKS", "--serve", "'unclosed"], "is not a command line"),
    (["--attempts", "0"], "at least 1"),
    (["--attempts", "2"], "no task can be eligible with 2 attempts per arm and --min-attempts 3; use --attempts 3 or more"),
    (["--attempts", "5", "--min-attempts", "10"], "use --attempts 10 or more"),
    (["--attempts", "3", "--rule", "holm"], "rule holm and fisher's test can never reach p < 0.1"),
])
def test_bad_promote_options_are_one_line(tmp_path, args, message):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("fix-git\n")
    url = f"sqlite:///{tmp_path}/s.db"
    create_or_resume(open_storage(url), "s", demo_config(2))
    process = cli("promote", "--storage", url, "--study", "s", "--once", *[str(tasks) if a == "TASKS" else a for a in args])
    output = process.communicate()[0]
    assert process.returncode == 2 and message in output and len(output.strip().splitlines()) == 1, output


def test_report_on_an_unknown_study_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    create_or_resume(open_storage(url), "s", demo_config(2))
    process = cli("report", "--storage", url, "--study", "nope")
    output = process.communicate()[0]
    assert process.returncode == 2 and "no abliterate study named 'nope'" in output


# ---- no verdict without results, runner checks, study names as folders -----------------------------

def test_no_valid_attempt_gives_no_verdict_and_a_later_run_decides(escaped, tmp_path):
    lines = []
    broken = Scripted(invalid)
    first = Promoter(open_storage(escaped), STUDY, broken, settings(tmp_path), log=lines.append)
    finished = first.run_once()
    swept = {n: p.details for n, p in first.promotions.all().items() if p.status != "dropped"}
    assert swept and finished == len(first.promotions.all()) - len(swept), first.promotions.all()  # the dropped ones
    for n, details in swept.items():
        assert first.promotions.get(n).status == "sweeping" and "gate" not in details
        assert details["error"].startswith("no verdict: no task has 3 valid attempts in each arm (0 valid candidate")
        assert sum(line.startswith(f"trial {n}: no verdict: ") for line in lines) == 1
    assert first.without_verdict == set(swept) and first.pending() == []  # this run does not spin on them
    assert first.looks(-1) == (1, 0)  # no look was spent on no data
    tries = len(broken.ran)

    fixed = Scripted(lifted)
    second = Promoter(open_storage(escaped), STUDY, fixed, settings(tmp_path), log=lambda s: None)
    assert second.run_once() == len(swept)
    # The given-up attempts got another round: every one of them ran again, the baseline's once.
    assert len(fixed.ran) == 9 * (1 + len(swept)) and tries == 3 * 9 * (1 + len(swept))
    decided = {n: second.promotions.get(n) for n in swept}
    assert all(p.status in ("accepted", "no_lift") for p in decided.values())
    # Every candidate that beat the base was put to the capability check, against one base measurement.
    checks = [p.confirmation.capability for p in decided.values()]
    assert all(c["questions"] == 32 and 0 <= c["accuracy"] <= 1 and c["max_new_tokens"] == 2 * demo_config(6).max_new_tokens
               for c in checks)
    assert len({(c["base_accuracy"], c["base_median_length"]) for c in checks}) == 1
    assert sum(line.startswith(f"trial {n}: capability ") for n in swept for line in lines) == len(swept)
    assert sorted(p.gate["look"] for p in decided.values()) == list(range(1, len(swept) + 1))


def test_a_nan_margin_or_a_lapsing_lease_is_refused_by_the_library_too(tmp_path):
    for options in ({"margin": math.nan}, {"margin": -0.1}, {"margin": 2.0}, {"lease_seconds": -5}, {"lease_seconds": math.inf}, {"lease_seconds": 1e12},
                    {"attempts": 0}, {"controls": -1}, {"confirm_tokens": 0}, {"max_invalid": -1}, {"rule": "any"}):
        with pytest.raises(ValueError):
            PromotionSettings(**options)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1, got nan"):
        GateRule(alpha=math.nan)


def test_the_runner_is_checked_before_any_confirmation_or_export(escaped, tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("t0\n")
    promote = ["promote", "--storage", escaped, "--study", STUDY, "--once", "--attempts", 3, "--controls", 0, "--device", "cpu",
               "--checkpoints", tmp_path / "ck", "--runner", "command", "--tasks", tasks]
    missing = cli(*promote, "--command", "no-such-runner-xyz {task} {attempt}")
    output = missing.communicate()[0]
    assert missing.returncode == 2 and output.strip().splitlines() == [
        "error: the runner command 'no-such-runner-xyz' was not found or is not executable; check --command"], output
    assert not (tmp_path / "ck").exists() and open_storage(escaped).engine.connect().execute(
        text("select count(*) from abl_promotion")).scalar() == 0

    # A runner that runs but whose every attempt is invalid: no verdict, said last, exit 2.
    broken = cli(*promote, "--command", """echo '{"status": "invalid"}'""")
    output = broken.communicate()[0]
    assert broken.returncode == 2, output
    assert output.strip().splitlines()[-1].startswith("error: trial(s) ") and "got no verdict" in output
    statuses = {p.status for p in Promoter(open_storage(escaped), STUDY, Scripted(lifted), settings(tmp_path),
                                           log=lambda s: None).promotions.all().values()}
    assert "sweeping" in statuses and not statuses & {"accepted", "no_lift"}


def test_a_study_name_never_leads_the_promoter_outside_its_checkpoints_folder(escaped, tmp_path):
    root = tmp_path / "work" / "ck"
    promoter = Promoter(open_storage(escaped), STUDY, Scripted(lifted), settings(tmp_path), log=lambda s: None)
    assert promoter.root == root / folder_name(STUDY)
    promoter.run_once()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["ck", "s.db"] and not (tmp_path / "escaped").exists()
    assert [p.name for p in root.iterdir()] == [folder_name(STUDY)]
    exported = [n for n, p in promoter.promotions.all().items() if p.status != "dropped"]
    assert exported and all((promoter.root / f"trial-{n}" / "config.json").is_file() for n in exported)
    assert (promoter.root / "sweeps" / "baseline" / "t0__0.log").is_file()

    # An absolute name does not replace the root either.
    storage = open_storage(escaped)
    create_or_resume(storage, "/abs", demo_config(2))
    assert Promoter(storage, "/abs", Scripted(lifted), settings(tmp_path), log=lambda s: None).root == root / folder_name("/abs")


def test_ctrl_c_in_promote_is_one_line_and_exit_130(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    create_or_resume(open_storage(url), "s", demo_config(2))  # no trials yet: the promoter watches
    process = subprocess.Popen([sys.executable, "-m", "abliterate", "promote", "--storage", url, "--study", "s", "--poll", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    assert process.stdout.readline().startswith("design: ")  # it started, and now waits for the front
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate()
    assert process.returncode == 130 and err == "error: interrupted\n", err
