"""``abliterate search --config study.toml``: the file holds a study; the environment variables
of deployment settings override it, and flags override both."""

import pytest

from abliterate.ablation.errors import AblationError
from abliterate.search.cli import parser
from abliterate.search.cli.settings import resolve

STUDY = """
model = "model"
harmful = "harmful.txt"
harmless = "demo-harmless"
split = [4, 6, 6]
trials = 12
kl-cap = 0.5
sampler = "random"
seed = 3
no-thinking = true

[space]
preset = "wide"
methods = ["mean", "cone"]
interventions = ["ablate", "heads"]
cone_rank = [1, 3]
peak_weight = [0.5, 1.2]
"""


def config_of(argv, monkeypatch=None, env=None):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    resolved = resolve(parser().parse_args(argv), warn=lambda line: None)
    return resolved.settings.study_config(resolved.space_ranges)


@pytest.fixture
def study_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "harmful.txt").write_text("\n".join(f"harmful request {i}" for i in range(20)))
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    return path


def test_the_file_describes_the_study(study_file):
    config = config_of(["search", "--config", str(study_file)])
    folder = study_file.parent
    assert config.model == str(folder / "model")  # relative paths from the file's folder
    assert config.harmful["extraction"] == f"{folder / 'harmful.txt'}[0:4]" and config.harmless["confirmation"] == "demo-harmless[10:16]"
    assert (config.n_trials, config.kl_cap, config.sampler, config.seed, config.enable_thinking) == (12, 0.5, "random", 3, False)
    space = config.space
    assert space.methods == ("mean", "cone") and space.interventions == ("ablate", "heads")
    assert space.cone_rank == (1, 3) and space.peak_weight == (0.5, 1.2)
    assert space.first_layer == (0.0, 0.4)  # the rest from the wide preset


def test_deployment_variables_override_the_file_and_flags_override_both(study_file, monkeypatch):
    study_file.write_text(STUDY.replace("[space]", "grace = 700\nheartbeat = 30\n\n[space]"))
    # A search setting's variable changes nothing (tests/test_search_settings.py: it is said to be ignored).
    env = {"ABLITERATE_TRIALS": "20", "ABLITERATE_METHODS": "pca", "ABLITERATE_KL_CAP": "0.25", "ABLITERATE_NO_THINKING": "false",
           "ABLITERATE_GRACE": "900"}
    config = config_of(["search", "--config", str(study_file)], monkeypatch, env)
    assert (config.n_trials, config.space.methods, config.kl_cap, config.enable_thinking) == (12, ("mean", "cone"), 0.5, False)
    assert (config.heartbeat_interval, config.grace_period) == (30, 900)
    # A flag wins even when it repeats the built-in default.
    config = config_of(["search", "--config", str(study_file), "--trials", "100", "--methods", "probe", "--grace", "600"], monkeypatch)
    assert (config.n_trials, config.space.methods, config.kl_cap, config.grace_period) == (100, ("probe",), 0.5, 600)


@pytest.mark.parametrize("text, env, message", [
    ("model = 'm'\ntrails = 3\n", {}, r"unknown setting 'trails'; settings are .*trials"),
    ("model = 'm'\n[space]\ncone_rnk = [1, 2]\n", {}, r"\[space\] has no setting 'cone_rnk'"),
    ("model = 'm'\n[space]\npeak_weight = 1.0\n", {}, r"\[space\] peak_weight must be \[low, high\]"),
    ("model = 'm'\n[space]\nread_peak_weight = [-1, 1]\n", {}, r"read_peak_weight range -1..1 must be weights from 0 up"),
    ("model = 'm'\nproxy = 'vibes'\n", {}, r"proxy is 'vibes'; use one of markers, first-token, agent"),
    ("model = 'm'\n", {"ABLITERATE_WORKERS": "many"}, r"\$ABLITERATE_WORKERS: 'many' is not a whole number"),
    ("model = 'm'\nmethods = 'mean,cones'\n", {}, r"unknown direction method 'cones' in --methods"),
    ("model = [", {}, r"is not valid TOML"),
])
def test_bad_study_files_are_one_line(tmp_path, monkeypatch, text, env, message):
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(AblationError, match=message):
        config_of(["search", "--config", str(path)], monkeypatch, env)


def test_calibrated_offers_the_uncalibrated_profile_where_the_designed_trials_start(tmp_path):
    from abliterate.search.space import starting_points

    (tmp_path / "model").mkdir()
    plain = config_of(["search", "--model", str(tmp_path / "model")]).space
    calibrated = config_of(["search", "--model", str(tmp_path / "model"), "--calibrated"]).space
    assert plain.calibration == () and calibrated.calibration == (0, 25, 75, 95)
    designed = starting_points(calibrated, 0.5, 6)
    assert [p["calibration"] for p in designed] == [0] * 6
    # Apart from the calibration param itself, the designed trials are the plain space's.
    assert [{k: v for k, v in p.items() if k != "calibration"} for p in designed] == starting_points(plain, 0.5, 6)
