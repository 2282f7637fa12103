"""``abliterate search``'s settings have one source (search/settings.py): every flag is generated
from it, StudyConfig takes its defaults from it, a new study says where each value that is not
the default came from, and a variable left in the shell for a search setting changes nothing."""

import optuna
import pytest

from abliterate.objectives.refuser import refuser_path
from abliterate.search.cli import main, parser
from abliterate.search.cli.settings import resolve
from abliterate.search.settings import DEFAULTS, DEPLOYMENT, SETTINGS, flag, variable
from abliterate.search.study import StudyConfig, load
from abliterate.search.values import study_name
from abliterate.storage.rdb import open_storage

PROMPTS = ["--harmful", "demo-harmful", "--harmless", "demo-harmless", "--split", "4,6,6"]


def _example(name: str) -> tuple[list[str], object]:
    """Arguments that set setting ``name`` to something other than its default, and that value."""
    setting = SETTINGS[name]
    if isinstance(setting.default, bool):
        return [flag(name)], True
    choices, parse = setting.metadata["choices"], setting.metadata["type"] or str
    text = choices[-1] if choices else "x,y" if parse in (str, study_name) else "0.5" if isinstance(setting.default, float) else "7"
    return [flag(name), text], parse(text)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_is_a_flag_generated_from_the_one_source(name):
    argv, value = _example(name)
    resolved = resolve(parser().parse_args(["search", *argv]), environ={})
    assert getattr(resolved.settings, name) == value != getattr(DEFAULTS, name)
    assert resolved.sources == {name: flag(name)}
    # Every other setting is its default: the parser holds none of its own.
    assert all(getattr(resolved.settings, other) == getattr(DEFAULTS, other) for other in SETTINGS if other != name)


def test_help_shows_each_default_and_the_variable_of_each_deployment_setting(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    help = " ".join(capsys.readouterr().out.split())
    for name, setting in SETTINGS.items():
        assert flag(name) in help
        if setting.default not in (None, False):
            assert f"default: {setting.default}" in help, name
        assert (f"or ${variable(name)})" in help) == (name in DEPLOYMENT), name


def test_the_default_settings_are_the_default_study_config():
    """Given only its prompts, a search makes the study StudyConfig makes from the same prompts:
    the two share every default, written once."""
    resolved = resolve(parser().parse_args(["search", "--model", "some/model", *PROMPTS]), environ={})
    assert resolved.settings.study_config() == StudyConfig.split("some/model", "demo-harmful", "demo-harmless", (4, 6, 6))


def _search(capsys, monkeypatch, env, *argv) -> tuple[int, list[str], list[str]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = main(["search", "--model", str(refuser_path()), "--workers", "0", "--storage", "sqlite:///s.db", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def test_a_new_study_says_where_each_value_that_is_not_the_default_came_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text("kl-cap = 0.5\ntrials = 3\nseed = 4\n[space]\npeak_weight = [0.5, 1.2]\n")
    # A flag that repeats the default and a file value the flag overrides say nothing.
    status, out, _ = _search(capsys, monkeypatch, {"ABLITERATE_GRACE": "900"}, *PROMPTS, "--config", "study.toml",
                             "--trials", "2", "--study", "abliterate")
    assert status == 0
    created = next(i for i, line in enumerate(out) if line.startswith("created study 'abliterate'"))
    origins = [line for line in out[created + 1:] if "(from " in line]
    assert out[created + 1:created + 1 + len(origins)] == origins  # said together, right after the study is created
    assert sorted(origins) == sorted([
        f"  model = {refuser_path()} (from --model)", "  harmful = demo-harmful (from --harmful)",
        "  harmless = demo-harmless (from --harmless)", "  split = 4,6,6 (from --split)", "  storage = sqlite:///s.db (from --storage)",
        "  workers = 0 (from --workers)", "  trials = 2 (from --trials)", "  kl-cap = 0.5 (from study.toml)",
        "  seed = 4 (from study.toml)", "  grace = 900 (from $ABLITERATE_GRACE)", "  [space] peak_weight = [0.5, 1.2] (from study.toml)"])
    config = load(open_storage("sqlite:///s.db"), "abliterate")[1]
    assert (config.kl_cap, config.n_trials, config.seed, config.grace_period, config.space.peak_weight) == (0.5, 2, 4, 900, (0.5, 1.2))
    # A resumed study keeps what it stored: nothing to say about where its values came from.
    status, out, _ = _search(capsys, monkeypatch, {}, *PROMPTS, "--config", "study.toml", "--trials", "2", "--grace", "900")
    assert status == 0 and any(line.startswith("resumed study") for line in out)
    assert not any("(from " in line for line in out)


def test_a_search_variable_left_in_the_shell_is_ignored_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = _search(capsys, monkeypatch, {"ABLITERATE_KL_CAP": "0.25", "ABLITERATE_NO_THINKING": "1"}, *PROMPTS)
    assert status == 0
    said = "is ignored: a study's settings come from flags or --config, only deployment settings from the environment"
    assert sorted(err) == [f"warning: $ABLITERATE_KL_CAP {said}; use --kl-cap 0.25", f"warning: $ABLITERATE_NO_THINKING {said}; use --no-thinking"]
    config = load(open_storage("sqlite:///s.db"), "abliterate")[1]
    assert (config.kl_cap, config.enable_thinking) == (DEFAULTS.kl_cap, None)
    assert not any("kl-cap" in line or "no-thinking" in line for line in out)
    # Switched off, the variable is no advice to pass the switch.
    heard = []
    resolve(parser().parse_args(["search"]), environ={"ABLITERATE_NO_THINKING": "false"}, warn=heard.append)
    assert heard == [f"warning: $ABLITERATE_NO_THINKING {said}; --no-thinking is off unless given"]
    assert len(optuna.get_all_study_summaries("sqlite:///s.db")) == 1


def test_the_named_choices_are_the_library_s():
    from abliterate.search import settings, study
    from abliterate.search.space import PRESETS

    assert settings.SPACE_PRESETS == tuple(PRESETS) and study.OBJECTIVES is settings.OBJECTIVES


def test_a_storage_url_is_said_without_its_password():
    resolved = resolve(parser().parse_args(["search"]), environ={"ABLITERATE_STORAGE": "postgresql+psycopg2://me:s3cret@db:5432/studies"})
    assert resolved.settings.storage == "postgresql+psycopg2://me:s3cret@db:5432/studies"
    assert resolved.origins() == ["  storage = postgresql+psycopg2://me:***@db:5432/studies (from $ABLITERATE_STORAGE)"]
