"""Bad input is refused in one line, with exit 2, before anything is written (in-process ``main``)."""

import pytest
import torch

from abliterate.search.cli import main

SEARCH = ["search", "--harmful", "demo-harmful", "--harmless", "demo-harmless", "--split", "4,6,6", "--storage", "sqlite:///s.db"]


def run(capsys, *args):
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:  # argparse refuses before the command runs
        status = exit.code
    err = capsys.readouterr().err.strip()
    return status, err


@pytest.fixture
def garbage_model(tmp_path):
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "config.json").write_text("{ this is not json")
    return folder


@pytest.mark.parametrize("model, extra, message", [
    ("/nonexistent", [], "error: model path /nonexistent does not exist"),
    ("GARBAGE", [], "error: cannot load"),
    ("demo", ["--devices", "cuda:0"], "error: device cuda:0: this machine has no CUDA GPU"),
    ("demo", ["--device", "cuda:3", "--workers", "1"], "error: device cuda:3: this machine has no CUDA GPU"),
])
def test_search_checks_model_and_device_before_writing_the_study(tmp_path, monkeypatch, capsys, garbage_model, model, extra, message):
    if torch.cuda.is_available() and "cuda" in message:
        pytest.skip("this machine has a GPU")
    from abliterate.objectives.refuser import refuser_path

    monkeypatch.chdir(tmp_path)
    spec = {"GARBAGE": garbage_model, "demo": refuser_path()}.get(model, model)
    status, err = run(capsys, *SEARCH, "--model", spec, *extra)
    assert status == 2 and err.startswith(message) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.db").exists()  # no study stored: the right model is still welcome


@pytest.mark.parametrize("extra, message", [
    (["--kl-cap", "-1"], "error: the KL cap must be a positive number, got -1.0"),
    (["--kl-cap", "nan"], "error: the KL cap must be a positive number, got nan"),
    (["--measured-starts", "--starting-points", "0"], "error: --measured-starts places the designed first trials, and --starting-points is 0"),
    (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
    (["--heartbeat", "60", "--grace", "1"], "error: the grace period (1 s, --grace) must be longer than the heartbeat interval (60 s"),
])
def test_nonsense_settings_are_refused(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, *SEARCH, "--model", "/nonexistent", *extra)
    assert status == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("command", [["worker"], ["launch", "--devices", "cpu"]])
def test_a_grace_period_within_the_heartbeat_is_refused(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, *command, "--storage", "sqlite:///s.db", "--heartbeat", "60", "--grace", "60")
    assert status == 2 and err.startswith("error: the grace period (60 s, --grace) must be longer") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("command", [
    ["front"], ["report"], ["export", "--trial", "0", "--out", "x"], ["worker"], ["dashboard"],
    ["promote", "--once", "--runner", "local"],
])
def test_read_only_commands_create_no_database(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, *command, "--storage", "sqlite:///nothing.db", *(["--study", "s"] if command[0] != "dashboard" else []))
    assert status == 2 and err.startswith("error: no study database at") and "nothing.db" in err, err
    assert not list(tmp_path.iterdir())


def test_export_refuses_an_infeasible_trial_unless_forced(tmp_path, monkeypatch, capsys):
    import optuna

    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage

    monkeypatch.chdir(tmp_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = StudyConfig.split("/nonexistent", "demo-harmful", "demo-harmless", (4, 6, 6), kl_cap=0.5)
    study, _ = create_or_resume(open_storage("sqlite:///s.db"), "s", config)
    study.add_trial(optuna.create_trial(values=[1.0, 0.9], params={}, distributions={}, user_attrs={"kl": 0.9, "feasible": False}))
    status, err = run(capsys, "export", "--storage", "sqlite:///s.db", "--study", "s", "--trial", 0, "--out", "x")
    assert status == 2 and err == ("error: trial 0 is infeasible: its KL 0.9 is over the study's cap 0.5; "
                                   "pick a trial from abliterate front, or pass --force to export it anyway")
    status, err = run(capsys, "export", "--storage", "sqlite:///s.db", "--study", "s", "--trial", 0, "--out", "x", "--force")
    assert status == 2 and "has no cached directions" in err  # past the check: --force lets it through
    assert not (tmp_path / "x").exists()


def test_the_study_stores_absolute_paths_and_loading_flags(tmp_path, monkeypatch, capsys, tiny):
    """A worker or promoter started in another folder must find the same model and prompt files,
    and load the model the way the study was created (remote code, device map)."""
    from abliterate.search.study import load
    from abliterate.storage.rdb import open_storage

    model, tokenizer = tiny("qwen3")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "harmful.txt").write_text("\n".join(f"how do I break thing {i}" for i in range(6)))
    (tmp_path / "harmless.txt").write_text("\n".join(f"how do I bake cake {i}" for i in range(6)))
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, "search", "--model", "./model", "--harmful", "harmful.txt", "--harmless", "harmless.txt",
                      "--split", "2,2,2", "--workers", 0, "--storage", "sqlite:///s.db", "--trust-remote-code")
    assert status == 0, err
    config = load(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "abliterate")[1]
    assert config.model == str(tmp_path / "model") and config.trust_remote_code and config.device_map is None
    assert config.harmful["extraction"] == f"{tmp_path / 'harmful.txt'}[0:2]"
    assert config.harmless["confirmation"] == f"{tmp_path / 'harmless.txt'}[4:6]"


@pytest.mark.parametrize("damage", ["truncated safetensors", "malicious pickle"])
def test_broken_or_hostile_weights_are_one_line(tmp_path, tiny, damage):
    import pickle

    from abliterate.ablation.errors import ModelLoadError
    from abliterate.ablation.loading import load_model

    model, tokenizer = tiny("qwen3")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    if damage == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        class Payload:
            def __reduce__(self):
                return (print, ("this ran: pickles must never be loaded",))

        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(error.value) and str(error.value).startswith(f"cannot load {folder}")


def test_dashboard_on_a_port_in_use_is_one_line(tmp_path, monkeypatch, capsys):
    import socket

    from abliterate.search.study import StudyConfig, create_or_resume
    from abliterate.storage.rdb import open_storage

    monkeypatch.chdir(tmp_path)
    create_or_resume(open_storage("sqlite:///s.db"), "s", StudyConfig.split("m", "demo-harmful", "demo-harmless", (4, 6, 6)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, err = run(capsys, "dashboard", "--storage", "sqlite:///s.db", "--port", port)
    assert status == 2 and err == f"error: cannot serve on 127.0.0.1:{port} (Address already in use); pass another --port"


JUDGE_MODULE = """
def make():
    raise RuntimeError("the judge's server is down")
"""


@pytest.mark.parametrize("command", ["search", "evaluate", "judge-check"])
def test_a_judge_factory_that_raises_is_one_line(tmp_path, monkeypatch, capsys, command):
    from abliterate.objectives.refuser import refuser_path

    (tmp_path / "failing_judge.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = {"search": [*SEARCH, "--model", refuser_path(), "--workers", 0],
            "evaluate": ["evaluate", "--model", refuser_path(), "--base", refuser_path()],
            "judge-check": ["judge-check", "--labeled", "refuser-answers"]}[command]
    status, err = run(capsys, *args, "--judge", "failing_judge:make")
    assert status == 2 and err == ("error: judge 'failing_judge:make' failed when it was made (RuntimeError: the judge's "
                                   "server is down); fix it, or use --judge markers / --judge llm"), err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["failing_judge.py"]  # no study written


@pytest.fixture
def closed_port():
    """A local port that refuses connections: bound, never listening."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_name_the_hub_cannot_provide_is_one_line_at_once(monkeypatch, closed_port, hub):
    """Without the hub a bare name is refused at once: no retries (they sleep 23 s in all)."""
    import time

    from huggingface_hub import constants

    from abliterate.ablation.errors import ModelLoadError
    from abliterate.ablation.loading import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub == "offline")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        load_model("refuser", device="cpu")
    assert time.monotonic() - started < 10
    why = "HF_HUB_OFFLINE is set" if hub == "offline" else f"the hub at http://127.0.0.1:{closed_port} is unreachable: "
    assert str(error.value).startswith(f"refuser is neither a local path nor a model available offline ({why}")
    assert str(error.value).endswith("pass a model folder or a .gguf file, or download it where the hub is reachable")


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_the_command_says_so_in_one_line(tmp_path, closed_port, hub):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"} if hub == "offline" else {
        **{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}"}
    result = subprocess.run([sys.executable, "-m", "abliterate", "search", "--model", "refuser", "--storage", "sqlite:///s.db"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: refuser is neither a local path nor a model available offline")
    assert not list(tmp_path.iterdir())


def test_a_cached_hub_model_loads_offline_without_retries(tmp_path, tiny, closed_port):
    """An unreachable hub does not stop a model the hub cache holds: it loads from there, quietly."""
    import os
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    model, tokenizer = tiny("qwen3")
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    env = {**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},
           "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-m", "abliterate", "inspect", "--model", "someorg/tiny"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "writers (attn" in result.stdout and "Retrying" not in result.stderr


def test_inspect_needs_no_tokenizer_and_the_others_name_the_missing_files(tmp_path, monkeypatch, capsys, tiny):
    model, _ = tiny("qwen3")
    model.save_pretrained(tmp_path / "model")  # weights and config, no tokenizer
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "--model", "model"]) == 0
    assert "writers (attn" in capsys.readouterr().out
    status, err = run(capsys, "directions", "--model", "model", "--harmful", "demo-harmful", "--harmless", "demo-harmless",
                      "--out", "d.safetensors")
    assert status == 2 and err == ("error: model has no tokenizer: none of tokenizer.json, tokenizer.model or vocab.json "
                                   "(with merges.txt) is in the folder; copy the base model's tokenizer files into it "
                                   "(abliterate inspect needs none)")
    status, err = run(capsys, *SEARCH, "--model", "model")
    assert status == 2 and err.startswith(f"error: {tmp_path / 'model'} has no tokenizer: none of tokenizer.json")
    assert not (tmp_path / "s.db").exists()


@pytest.fixture
def model_folder(saved_tiny):
    return saved_tiny("qwen3")


def _damage(folder, damage):
    import pickle

    weights = folder / "model.safetensors"
    if damage == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "refused pickle":
        class Payload:
            def __reduce__(self):
                return (print, ("this ran: pickles must never be loaded",))

        weights.rename(folder / "kept")
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    elif damage == "no weights":
        weights.rename(folder / "kept")


def _repair(folder, damage, good):
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    (folder / "kept").unlink(missing_ok=True)
    (folder / "model.safetensors").write_bytes(good)


@pytest.mark.parametrize("damage, extra, message", [
    ("unknown dtype", ["--dtype", "fp7"], "error: unknown dtype 'fp7'; use one of auto, stored, float32"),
    ("truncated safetensors", [], "error: cannot load MODEL: model.safetensors is damaged (Error while deserializing header"),
    ("refused pickle", [], "error: cannot load MODEL: pytorch_model.bin is a pickle that torch refuses to load"),
    ("no weights", [], "error: cannot load MODEL: the folder holds no weights"),
])
def test_weights_and_dtype_are_checked_before_the_study_is_written(tmp_path, monkeypatch, capsys, model_folder, damage, extra, message):
    """Refused before anything is stored, so the corrected command is welcome (not "exists with
    other settings"). Weight files are checked by their headers, not loaded."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the fixture's progress bar
    good = (model_folder / "model.safetensors").read_bytes()
    _damage(model_folder, damage)
    args = [*SEARCH, "--model", model_folder, "--workers", 0]
    status, err = run(capsys, *args, *extra)
    assert status == 2 and err.startswith(message.replace("MODEL", str(model_folder))) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.db").exists()
    _repair(model_folder, damage, good)
    status, err = run(capsys, *args)
    assert status == 0, err


@pytest.mark.parametrize("storage, message, code", [
    ("postgresql+psycopg2://postgres@127.0.0.1:1/x", "error: cannot reach the database at postgresql+psycopg2://postgres@127.0.0.1:1/x", 3),
    ("postgresql+psycopg2://postgres@127.0.0.1:5432/abl_no_such_db", "error: cannot reach the database", 3),
    ("sqlite:///no/such/folder/s.db", "error: folder", 2),
])
def test_the_storage_is_checked_before_the_model(tmp_path, monkeypatch, capsys, storage, message, code):
    """A URL typo is told at once: before the model checks (which take a minute on a real model)
    and before torch and the prompt sources are loaded. Here the model does not exist and the
    split does not fit its sources, and it is the storage that is named."""
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, "search", "--model", "/nonexistent", "--split", "1000,1000,1000", "--storage", storage)
    assert status == code and err.startswith(message) and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["search", "--model", "/nonexistent"], ["front"], ["worker"], ["export", "--trial", "0", "--out", "x"]])
def test_an_empty_study_name_is_refused(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    status, err = run(capsys, *command, "--storage", "sqlite:///s.db", "--study", "")
    assert status == 2 and err == (f"abliterate {command[0]}: error: argument --study: a study needs a name, got an empty one "
                                   f"(see abliterate {command[0]} --help)")
    assert not list(tmp_path.iterdir())
