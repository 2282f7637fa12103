"""Promotion end to end on the shipped refusing model: front -> confirmation -> checkpoint ->
local agent sweep -> gate -> report, with a real promoter process killed mid-sweep on PostgreSQL."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna_dashboard._note import get_note_from_system_attrs
from sqlalchemy import text

from objectives.sweep.base import run_sweep
from objectives.sweep.local import LocalRunner
from search.checkpoint import rebuild
from search.demo import demo_config
from search.promoter import Promoter, PromotionSettings
from search.study import create_or_resume, stop_requested
from search.worker import run_worker
from storage.promotions import SweepStore
from storage.rdb import open_storage

ATTEMPTS = 3


def cli(*args):
    return subprocess.Popen([sys.executable, "-m", "search.cli", *map(str, args)], stdout=subprocess.PIPE,
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


def test_promoter_killed_mid_sweep_resumes_without_rerunning_and_reaches_the_same_verdict(postgres_url, tmp_path):
    study_with_front(postgres_url)
    engine = open_storage(postgres_url).engine
    promote = ["promote", "--storage", postgres_url, "--study", "s", "--once", "--attempts", ATTEMPTS, "--device", "cpu",
               "--checkpoints", tmp_path / "ck", "--lease", 3, "--controls", 2]  # a small band: the controls are not what is tested
    first = cli(*promote)
    while len(attempt_rows(engine)) < 12:  # a state, whatever the time it takes
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
    assert "design: rule any, fisher, alpha 0.1, 10 task(s), N = 3" in log  # the plan line, before any sweep

    report = cli("report", "--storage", postgres_url, "--study", "s", "--json")
    rows = json.loads(report.communicate()[0])
    decided = [r for r in rows if r["status"] in ("accepted", "no_lift")]
    assert decided, rows
    # Every decision counts the candidates gated before it in the study, one look each.
    assert sorted(r["gate"]["look"] for r in decided) == list(range(1, len(decided) + 1))
    assert all(r["gate"]["tested"] == r["gate"]["look"] * len(LocalRunner().tasks()) for r in decided)
    row = decided[0]
    assert row["confirmation"]["passed"] and row["attempts"] == ATTEMPTS
    assert row["confirmation"]["specific"] is True and row["confirmation"]["controls"]["count"] == 2  # run in confirmation
    tasks = row["gate"]["tasks"]
    assert len(tasks) == len(LocalRunner().tasks())
    assert all(t["counts"]["candidate_n"] == ATTEMPTS and t["counts"]["baseline_n"] == ATTEMPTS for t in tasks)

    # The verdict equals a clean, uninterrupted sweep of the same checkpoints.
    runner = LocalRunner(device="cpu", dtype="fp32")
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

    # A second run finds nothing left to do.
    again = cli(*promote)
    assert again.communicate()[0].count("checkpoint") == 0 and again.returncode == 0


def test_accepted_lift_stops_the_study_and_its_workers(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study_with_front(url)
    promoter = Promoter(open_storage(url), "s", LocalRunner(device="cpu", dtype="fp32"),
                        PromotionSettings(attempts=ATTEMPTS, stop_at_first_lift=True, checkpoints=str(tmp_path / "ck"), device="cpu",
                                          controls=2),
                        log=lambda s: None)
    promoter.run_once()
    statuses = [s for s, _ in promoter.promotions.all().values()]
    assert statuses.count("accepted") == 1, statuses  # the first lift stopped the promoter
    # The checkpoint states the verdict, and rebuilds bit for bit from its record alone.
    number, (_, details) = next((n, p) for n, p in promoter.promotions.all().items() if p[0] == "accepted")
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


def test_a_candidate_that_no_longer_beats_the_base_is_dropped(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study_with_front(url)
    promoter = Promoter(open_storage(url), "s", LocalRunner(device="cpu", dtype="fp32"),
                        PromotionSettings(attempts=ATTEMPTS, margin=1.5, checkpoints=str(tmp_path / "ck"), device="cpu"),
                        log=lambda s: None)
    promoter.run_once()
    assert {s for s, _ in promoter.promotions.all().values()} == {"dropped"}
    assert not (tmp_path / "ck").exists()  # nothing exported, nothing swept
    trial = optuna.load_study(study_name="s", storage=url).trials[next(iter(promoter.promotions.all()))]
    assert trial.user_attrs["promotion"] == "dropped"


@pytest.mark.parametrize("args, message", [
    (["--runner", "command", "--tasks", "TASKS"], "needs --command"),
    (["--runner", "harbor"], "needs --tasks FILE"),
    (["--runner", "local", "--tasks", "/nonexistent"], "does not exist"),
    (["--alpha", "2"], "alpha must be between 0 and 1"),
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
