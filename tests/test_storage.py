"""Storage URLs, schema and crash retry on SQLite and a real PostgreSQL (127.0.0.1:5432)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from abliterate.storage.errors import StorageError
from abliterate.storage.rdb import open_storage
from abliterate.storage.tables import SCHEMA_VERSION
from abliterate.storage.urls import DEFAULT_URL, PASSWORD_FILE, normalize_url, redacted


@pytest.mark.parametrize(
    "url, expected",
    [
        (None, DEFAULT_URL),
        ("postgresql://u:secret@db:5432/studies", "postgresql+psycopg2://u:secret@db:5432/studies"),
        ("postgresql+psycopg2://u@h/s", "postgresql+psycopg2://u@h/s"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


def test_bare_sqlite_path(tmp_path):
    assert normalize_url(str(tmp_path / "s.db")) == f"sqlite:///{tmp_path / 's.db'}"


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "bad storage URL 'not a url'"),
        ("mysql://root@localhost/x", "unsupported storage 'mysql'"),
        ("postgresql://u@host", "names no database"),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(StorageError, match=message):
        normalize_url(url)


def test_a_password_file_gives_the_password_a_postgres_url_lacks(tmp_path, monkeypatch):
    secret = tmp_path / "postgres-password"
    secret.write_text("s3cret@x\n")  # as `openssl rand` or `echo` write it: the first line is the password
    monkeypatch.setenv(PASSWORD_FILE, str(secret))
    assert normalize_url("postgresql://u@db:5432/studies") == "postgresql+psycopg2://u:s3cret%40x@db:5432/studies"
    assert normalize_url("postgresql://u:given@db/studies") == "postgresql+psycopg2://u:given@db/studies"  # the URL's own wins
    assert normalize_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


@pytest.mark.parametrize("content, message", [(None, "cannot read the storage password file"), ("", "is empty"), ("\nx", "is empty")])
def test_a_bad_password_file_is_one_line(tmp_path, monkeypatch, content, message):
    secret = tmp_path / "postgres-password"
    if content is not None:
        secret.write_text(content)
    monkeypatch.setenv(PASSWORD_FILE, str(secret))
    with pytest.raises(StorageError, match=message) as caught:
        normalize_url("postgresql://u@db/studies")
    assert str(caught.value).count("\n") == 0 and PASSWORD_FILE in str(caught.value)


def test_redacted_hides_password():
    assert "secret" not in redacted("postgresql://u:secret@h/db")


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u@h/db?password=s3cret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslpassword=s3cret", "postgresql://u@h/db?sslpassword=***"),
    ("postgresql://u:p@s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:p@s3c:ret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:p@s3cret@h:port/db", "postgresql://u:***@h:port/db"),  # unparseable: still hidden
])
def test_redacted_hides_password_parameters_and_passwords_holding_an_at(url, shown):
    assert redacted(url) == shown


def test_an_unencoded_at_belongs_to_the_password():
    from sqlalchemy.engine import make_url

    parsed = make_url(normalize_url("postgresql://u:p@ss@db.example:5432/studies?application_name=a@b"))
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == ("u", "p@ss", "db.example", 5432)
    assert parsed.query == {"application_name": "a@b"}


def test_a_driver_message_is_passed_on_without_the_password():
    url = "postgresql://u:p@s3cret@h/db?password=other-s3cret"
    assert redacted(url, 'could not translate host name "s3cret@h": p@s3cret other-s3cret') == (
        'could not translate host name "s3cret@h": *** ***')
    assert "s3cret" not in redacted(url, "p%40s3cret")  # as the URL spells it


@pytest.mark.parametrize("url", ["postgresql+psycopg2://postgres:p@s3cret@127.0.0.1:1/x",
                                 "postgresql+psycopg2://postgres@127.0.0.1:1/x?password=s3cret"])
def test_an_unreachable_database_is_told_without_the_password(url):
    """The driver would have tried host "s3cret@127.0.0.1" and quoted it; now it tries 127.0.0.1."""
    result = subprocess.run([sys.executable, "-m", "abliterate", "front", "--storage", url, "--study", "s"],
                            capture_output=True, text=True)
    assert result.returncode == 3 and result.stderr.startswith("error: cannot reach the database at postgresql+psycopg2://postgres")
    assert "s3cret" not in result.stderr and '"127.0.0.1"' in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_folder_is_not_a_study_database(tmp_path):
    """sqlite:////tmp gave a traceback (IsADirectoryError) in every command that opens storage."""
    for command in (["front", "--study", "s"], ["worker", "--study", "s"], ["search", "--model", "/nonexistent"]):
        result = subprocess.run([sys.executable, "-m", "abliterate", *command, "--storage", f"sqlite:///{tmp_path}"],
                                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"error: {tmp_path} is a folder, not a study database; name a file in it, "
                                              f"like sqlite:///{tmp_path / 'abliterate.db'}"]
    assert not list(tmp_path.iterdir())


def test_sqlite_schema_created_once_and_versioned(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    tables = set(sqlalchemy.inspect(storage.engine).get_table_names())
    assert {"abl_schema", "abl_artifact_cache", "studies", "trials"} <= tables
    open_storage(url)  # second open: no error, nothing recreated
    with storage.engine.begin() as connection:
        assert connection.execute(sqlalchemy.text("select version from abl_schema")).scalar_one() == SCHEMA_VERSION
        connection.execute(sqlalchemy.text("update abl_schema set version = 99"))
    with pytest.raises(StorageError, match="newer abliterate"):
        open_storage(url)


def test_postgres_storage_runs_a_study(postgres_url):
    storage = open_storage(postgres_url, heartbeat_interval=5, grace_period=20)
    assert storage.get_heartbeat_interval() == 5 and storage.get_heartbeat_stale_trial_callback() is not None
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=3)
    assert len(optuna.load_study(study_name="s", storage=postgres_url).trials) == 3


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql+psycopg2://postgres@127.0.0.1:1/test", "cannot reach the database"),
        ("postgresql+psycopg2://postgres@127.0.0.1:5432/abl_no_such_db", 'database "abl_no_such_db" does not exist'),
    ],
)
def test_unreachable_database_is_one_line(url, message):
    with pytest.raises(StorageError, match=message) as error:
        open_storage(url)
    assert "\n" not in str(error.value)


WORKER = textwrap.dedent("""
    import sys, time, optuna
    from abliterate.storage.rdb import open_storage
    from abliterate.storage.stale import PARAMS_COMPLETE
    storage = open_storage(sys.argv[1], heartbeat_interval=1, grace_period=3)
    study = optuna.load_study(study_name="crash", storage=storage)
    def objective(trial):
        trial.suggest_float("x", 0, 1)
        trial.storage.set_trial_system_attr(trial._trial_id, PARAMS_COMPLETE, True)  # as search.worker does
        print("started", flush=True)
        time.sleep(600)
    study.optimize(objective, n_trials=1)
""")


@pytest.mark.filterwarnings("ignore", category=ExperimentalWarning)
def test_killed_worker_trial_fails_and_is_retried_with_same_params(postgres_url, tmp_path):
    storage = open_storage(postgres_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, study_name="crash")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    worker = subprocess.Popen([sys.executable, str(script), postgres_url], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert worker.stdout.readline().strip() == "started"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    running = study.get_trials(states=[TrialState.RUNNING])
    assert len(running) == 1
    while not study.get_trials(states=[TrialState.FAIL]):  # once the grace period passes with no heartbeat
        time.sleep(0.2)
        fail_stale_trials(study)
    failed = study.get_trials(states=[TrialState.FAIL])
    waiting = study.get_trials(states=[TrialState.WAITING])
    assert [t.number for t in failed] == [running[0].number]
    assert len(waiting) == 1 and waiting[0].params == running[0].params
    assert waiting[0].system_attrs["failed_trial"] == running[0].number


@pytest.mark.filterwarnings("ignore", category=ExperimentalWarning)
def test_a_retry_carries_its_candidate_and_provenance_only(tmp_path):
    """Params, distributions and where they came from; not the failed attempt's figures, its
    constraint (a retry that carried it would have its own ignored, with a warning) or the
    sampler's notes. Queued once, however many processes saw the trial fail."""
    import warnings

    from abliterate.storage.records import PARAMS_COMPLETE, PROVENANCE, WARM_START
    from abliterate.storage.stale import RetrySameCandidate

    assert set(PROVENANCE) == {"starting_point", "warm_start"} == {"starting_point", WARM_START}  # the names stored since the start
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
    study.enqueue_trial({"x": 0.5}, user_attrs={"starting_point": True, WARM_START: {"trial": 3}})
    failed = study.ask()
    failed.suggest_float("x", 0, 1)
    storage.set_trial_system_attr(failed._trial_id, PARAMS_COMPLETE, True)
    for key, value in {"kl": 0.1, "refusal": 0.0, "feasible": True}.items():
        failed.set_user_attr(key, value)
    failed.set_constraint("kl_over_cap", -0.9)
    storage.set_trial_system_attr(failed._trial_id, "nsga2:generation", 0)
    storage.set_trial_state_values(failed._trial_id, TrialState.FAIL)
    for _ in range(2):  # two processes that both saw it fail
        RetrySameCandidate()(study, storage.get_trial(failed._trial_id))
    [retry] = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == {"x": 0.5} and retry.distributions == storage.get_trial(failed._trial_id).distributions
    assert retry.user_attrs == {"starting_point": True, WARM_START: {"trial": 3}}
    assert retry.system_attrs == {"fixed_params": {"x": 0.5}, PARAMS_COMPLETE: True, "retry_history": [0], "failed_trial": 0}
    again = study.ask()
    assert again.number == retry.number
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.set_constraint("kl_over_cap", 0.2)


def test_a_lost_database_is_one_line_or_waited_for(private_postgres):
    """Without patience a lost database is one line (DatabaseUnreachable: exit 3 at the command
    line); with it, the call waits for the server, says so, and returns as if nothing happened."""
    import threading

    from abliterate.storage.errors import DatabaseUnreachable

    storage = open_storage(private_postgres.url)
    study_id = optuna.create_study(storage=storage, study_name="s")._study_id
    private_postgres.stop()
    with pytest.raises(DatabaseUnreachable, match=r"^lost the database \(") as error:
        storage.get_all_studies()
    assert "\n" not in str(error.value)
    lines, got = [], []
    storage.tolerate_outages(120, lines.append)
    waiting = threading.Thread(target=lambda: got.append(storage.get_study_id_from_name("s")))
    waiting.start()
    while not lines:  # the call has met the outage
        time.sleep(0.05)
    private_postgres.start()
    waiting.join()
    assert got == [study_id]
    assert lines[0].startswith("database unreachable (") and lines[-1].startswith("database reachable again after")
