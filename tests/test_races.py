"""Many processes at once on one study: creation, the last trial, promotion verdicts."""

import os
import subprocess
import sys
import textwrap

import optuna
import pytest

from abliterate.search.study import StudyConfig, create_or_resume
from abliterate.storage.rdb import open_storage

CREATE = textwrap.dedent("""
    import sys
    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage
    config = StudyConfig.split("some/model", "demo-harmful", "demo-harmless", (4, 6, 6), n_trials=5)
    print("ready", flush=True)
    sys.stdin.readline()  # all start together, once every process is ready
    study, resumed = create_or_resume(open_storage(sys.argv[1]), "s", config)
    print("resumed" if resumed else "created", flush=True)
""")


def config(**options):
    return StudyConfig.split("some/model", "demo-harmful", "demo-harmless", (4, 6, 6), **({"n_trials": 5} | options))


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request, tmp_path):
    """A database nobody has opened yet (no tables): PostgreSQL or a SQLite file to be."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'fresh.db'}"


def test_many_processes_create_one_study_on_a_fresh_database(fresh_url, tmp_path):
    script = tmp_path / "create.py"
    script.write_text(CREATE)
    processes = [subprocess.Popen([sys.executable, str(script), fresh_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
                 for _ in range(6)]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    for process in processes:  # released together: they open the storage and create at the same moment
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate()[0].strip().splitlines()[-1] for process in processes]
    assert [p.returncode for p in processes] == [0] * 6, outputs
    assert sorted(outputs) == ["created"] + ["resumed"] * 5
    summaries = optuna.get_all_study_summaries(open_storage(fresh_url))
    assert [s.study_name for s in summaries] == ["s"] and "abliterate" in summaries[0].user_attrs


def test_a_half_made_study_is_waited_for_not_refused(tmp_path):
    """A study seen between its creation and its settings (another process creating it) is read
    once the creator is done, not called foreign."""
    from abliterate.search.study import _creating, load

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    with _creating(storage, "s"):
        study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
        import threading

        loaded = []
        reader = threading.Thread(target=lambda: loaded.append(load(storage, "s")[1]))
        reader.start()
        study.set_user_attr("abliterate", config().to_json())
    reader.join()
    assert loaded == [config()]


def test_a_second_promoter_leaves_a_finished_verdict_alone(tmp_path, monkeypatch):
    """A promoter whose pending list was read before another promoter finished a candidate does
    not gate it again (its other settings would overwrite the verdict)."""
    from abliterate.search.promoter import Promoter
    from abliterate.storage.promotions import PromotionStore

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, _ = create_or_resume(storage, "s", config())
    study.add_trial(optuna.create_trial(values=[0.1, 0.01], params={}, distributions={}))
    trial = study.trials[0]

    class Runner:
        name = "none"

        def tasks(self):
            return ["t0", "t1", "t2"]  # a design that can pass, so the promoter starts

        def check(self):
            pass

    promoter = Promoter(storage, "s", Runner(), log=lambda line: None)
    monkeypatch.setattr(promoter, "pending", lambda: [trial])  # read before the other promoter finished
    PromotionStore(storage.engine, "s").update(0, "no_lift", gate={"by": "the first promoter"})
    gated = []
    monkeypatch.setattr(promoter, "promote", lambda t: gated.append(t.number) or "accepted")
    assert promoter.run_once() == 0 and gated == []
    kept = PromotionStore(storage.engine, "s").get(0)
    assert (kept.status, kept.gate) == ("no_lift", {"by": "the first promoter"})


def test_a_worker_with_a_user_error_is_not_restarted(tmp_path, capfd):
    """Exit 2 (no such study) is the same on every restart: the launcher gives up at once."""
    from abliterate.search.launcher import supervise

    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_resume(open_storage(url), "s", config())
    assert supervise(url, "other", ["cpu"], poll=0.1) == 1
    err = capfd.readouterr().err
    assert "restarting" not in err and err.count("no abliterate study named 'other'") == 1, err
