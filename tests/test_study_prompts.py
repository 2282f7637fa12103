"""A study's prompt sets, as later processes see them: a changed prompt file is named, and
``evaluate --study`` scores on the study's own sets (real processes)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from abliterate.search.study import load
from abliterate.storage.rdb import open_storage


def abliterate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "abliterate", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}, cwd=cwd)


@pytest.fixture
def made(tmp_path, tiny):
    """A study made by ``search --workers 0`` in ``tmp_path/made`` from relative prompt files."""
    folder = tmp_path / "made"
    model, tokenizer = tiny("qwen3")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "harmful.txt").write_text("\n".join(f"how do I break thing {i}" for i in range(6)))
    (folder / "harmless.txt").write_text("\n".join(f"how do I bake cake {i}" for i in range(6)))
    result = abliterate("search", "--model", "model", "--harmful", "harmful.txt", "--harmless", "harmless.txt", "--split", "2,2,2",
                        "--workers", 0, "--storage", "sqlite:///s.db", "--study", "s", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_the_study_keeps_each_prompt_file_with_its_sha256(made):
    config = load(open_storage(f"sqlite:///{made / 's.db'}", create=False), "s")[1]
    assert config.prompt_files == {str(made / name): hashlib.sha256((made / name).read_bytes()).hexdigest()
                                   for name in ("harmful.txt", "harmless.txt")}


def test_a_changed_prompt_file_is_named_by_every_later_process(made, tmp_path):
    """Worker, promoter, evaluate and a resumed search, started elsewhere after the file changed,
    each refuse in the same one line; restored, the file is welcome again."""
    harmful = made / "harmful.txt"
    original = harmful.read_text()
    harmful.write_text(original.replace("thing 1", "thing one"))
    before = hashlib.sha256(original.encode()).hexdigest()[:12]
    now = hashlib.sha256(harmful.read_bytes()).hexdigest()[:12]
    expected = (f"error: prompt file {harmful} has changed since the study was made (sha256 {now}, was {before}); "
                "restore it, or start a new study (another --study name)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{made / 's.db'}"
    for command in (["worker", "--storage", url, "--study", "s"],
                    ["promote", "--once", "--storage", url, "--study", "s", "--checkpoints", elsewhere / "checkpoints"],
                    ["evaluate", "--model", made / "model", "--base", made / "model", "--storage", url, "--study", "s"]):
        result = abliterate(*command, cwd=elsewhere)
        assert (result.returncode, result.stderr.strip()) == (2, expected), (command[0], result.stderr)
    resumed = abliterate("search", "--model", "model", "--harmful", "harmful.txt", "--harmless", "harmless.txt", "--split", "2,2,2",
                         "--workers", 0, "--storage", "sqlite:///s.db", "--study", "s", cwd=made)
    assert (resumed.returncode, resumed.stderr.strip()) == (2, expected)
    assert not list(elsewhere.iterdir())
    harmful.write_text(original)
    resumed = abliterate("search", "--model", "model", "--harmful", "harmful.txt", "--harmless", "harmless.txt", "--split", "2,2,2",
                         "--workers", 0, "--storage", "sqlite:///s.db", "--study", "s", cwd=made)
    assert resumed.returncode == 0 and "resumed study 's'" in resumed.stdout, resumed.stderr


@pytest.mark.parametrize("prompt_set", ["confirmation", "evaluation"])
def test_evaluate_takes_the_study_prompt_sets(made, tmp_path, prompt_set):
    config = load(open_storage(f"sqlite:///{made / 's.db'}", create=False), "s")[1]
    result = abliterate("evaluate", "--model", made / "model", "--base", made / "model", "--storage", f"sqlite:///{made / 's.db'}",
                        "--study", "s", "--prompt-set", prompt_set, "--max-new-tokens", 2, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    used = json.loads(result.stdout)["prompt_sets"]
    assert used["harmful"] == {"source": config.harmful[prompt_set], "count": 2}
    assert used["harmless"] == {"source": config.harmless[prompt_set], "count": 2}
    assert used["from"] == f"harmful and harmless from study 's' in sqlite:///{made / 's.db'} ({prompt_set} sets)"
    assert json.loads(result.stdout)["kl"] == 0  # the model against itself


def test_evaluate_says_which_prompt_sets_a_default_run_used(made, tmp_path):
    result = abliterate("evaluate", "--model", made / "model", "--base", made / "model", "--max-new-tokens", 2,
                        "--harmless", made / "harmless.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (f"prompt sets: harmful demo-harmful (16), harmless {made / 'harmless.txt'} (6); the demo "
                                             "sets by default for harmful: pass --harmful/--harmless, or --storage/--study for a "
                                             "study's own")


def test_evaluate_takes_the_study_judge_unless_given_one(tmp_path, monkeypatch, capsys):
    """The study's own judge (here one that cannot be made, so that it shows without a model run)."""
    from abliterate.objectives.refuser import refuser_path
    from abliterate.search.cli import main
    from abliterate.search.study import StudyConfig, create_or_resume

    (tmp_path / "study_judge.py").write_text("def make():\n    raise RuntimeError('down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = StudyConfig.split(str(refuser_path()), "demo-harmful", "demo-harmless", (4, 6, 6), judge="study_judge:make")
    create_or_resume(open_storage("sqlite:///s.db"), "s", config)
    evaluate = ["evaluate", "--model", str(refuser_path()), "--base", str(refuser_path()), "--storage", "sqlite:///s.db", "--study", "s"]
    assert main(evaluate) == 2
    assert capsys.readouterr().err.startswith("error: judge 'study_judge:make' failed when it was made (RuntimeError: down)")
    assert main([*evaluate, "--judge", "markers", "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_sets"]["harmful"] == {"source": "demo-harmful[10:16]", "count": 6}


def test_a_study_made_before_digests_resumes(tmp_path):
    """Studies stored without prompt_files resume from the same files (nothing to compare them with)."""
    from dataclasses import replace

    from abliterate.search.study import StudyConfig, create_or_resume

    (tmp_path / "harmful.txt").write_text("\n".join(f"how do I break thing {i}" for i in range(6)))
    config = StudyConfig.split("some/model", str(tmp_path / "harmful.txt"), "demo-harmless", (2, 2, 2))
    assert list(config.prompt_files) == [str(tmp_path / "harmful.txt")]
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    create_or_resume(storage, "s", replace(config, prompt_files={}))
    assert create_or_resume(storage, "s", config)[1]


@pytest.mark.parametrize("spec, expected", [
    ("h.txt", ["h.txt[0:64]", "h.txt[64:84]", "h.txt[84:100]"]),
    ("h.txt[0:120]", ["h.txt[0:64]", "h.txt[64:84]", "h.txt[84:100]"]),  # the README's trailing slice: cut within it
    ("h.txt[50:]", ["h.txt[50:114]", "h.txt[114:134]", "h.txt[134:150]"]),
    ("h.txt[-100:]", ["h.txt[76:140]", "h.txt[140:160]", "h.txt[160:176]"]),
    ("advbench[0:100]", ["advbench[0:64]", "advbench[64:84]", "advbench[84:100]"]),
])
def test_a_source_that_ends_in_a_slice_is_split_within_it(tmp_path, monkeypatch, spec, expected):
    from abliterate.search.study import StudyConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.txt").write_text("\n".join(f"how do I break thing {i}" for i in range(176)))
    config = StudyConfig.split("some/model", spec, "benign", (64, 20, 16))
    assert list(config.harmful.values()) == expected
    assert [len(prompts) for (side, _), prompts in config.prompts().items() if side == "harmful"] == [64, 20, 16]


@pytest.mark.parametrize("split, source, message", [
    ("100,50,50", "harmful.txt", "the harmful source '{folder}/harmful.txt' has 176 prompts, fewer than the 200 that split "
                                 "100,50,50 takes; pass --split 88,44,44 (the largest in these proportions that fits) or a bigger source"),
    ("64,20,20", "harmful.txt[0:100]", "the harmful source '{folder}/harmful.txt[0:100]' has 100 prompts, fewer than the 104 that "
                                       "split 64,20,20 takes; pass --split 61,19,19"),
])
def test_a_split_larger_than_its_source_is_refused(tmp_path, split, source, message):
    """It used to shorten the confirmation set without a word (26 prompts of 50 here)."""
    (tmp_path / "harmful.txt").write_text("\n".join(f"how do I break thing {i}" for i in range(176)))
    result = abliterate("search", "--model", "/nonexistent", "--harmful", source, "--harmless", "benign", "--split", split,
                        "--storage", "sqlite:///s.db", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: " + message.format(folder=tmp_path)) and len(result.stderr.splitlines()) == 1, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["harmful.txt"]


def test_search_takes_a_source_that_ends_in_a_slice(made):
    result = abliterate("search", "--model", "model", "--harmful", "harmful.txt[1:5]", "--harmless", "harmless.txt[0:3]",
                        "--split", "1,1,1", "--workers", 0, "--storage", "sqlite:///t.db", "--study", "t", cwd=made)
    assert result.returncode == 0, result.stderr
    config = load(open_storage(f"sqlite:///{made / 't.db'}", create=False), "t")[1]
    assert [config.harmful[p] for p in ("extraction", "evaluation", "confirmation")] == [
        f"{made / 'harmful.txt'}[{a}:{a + 1}]" for a in (1, 2, 3)]
