"""bench/gpu.py: the GPU measurement, rehearsed on the CPU with its tiny config.

No GPU here: ``--tiny`` runs the same code (model built from a config file, the checks, the real
trial loop, two real worker processes on one SQLite study) on the CPU. The wheel install the GPU
machine uses is run here too, on a wheel built on the spot.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from gpu import PLANS, Budget  # noqa: E402
from gpu_bundle import install  # noqa: E402


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow  # minutes of CPU: the whole GPU plan on a tiny config, two venvs' worth of runs
def test_tiny_run_measures_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    # A budget no machine exhausts: this test checks what is measured, never how fast.
    run = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu", "--budget", "100000", "--out", str(out)],
                         cwd=REPO, env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(run.stdout) == result
    plan = PLANS["tiny"]

    assert result["setup"]["model"].startswith("Qwen3_5ForCausalLM from bench/configs/qwen3_5_tiny_text.json")
    assert result["checks"]["bake_restore"]["parameters_changed_by_the_bake"] > 0
    assert result["checks"]["bake_restore"]["bit_exact_after_restore"]
    [generation] = result["checks"]["generation"]
    assert generation["identical"] == generation["prompts"] == plan.check[0], generation["mismatches"]
    assert generation["stopped_mid_answer"] > 0  # rows left early, so waiting prompts joined running ones
    assert generation["prefill_calls"] > -(-plan.check[0] // plan.check[1])

    trials = result["trials"]
    assert trials["directions_s"] > 0
    assert sorted(map(int, trials["batch_sizes"])) == sorted(plan.batch_sizes)
    for row in trials["batch_sizes"].values():
        assert "cut" not in row
        assert len(row["trials"]) == plan.trials
        assert all(row["per_trial_s"][part] > 0 for part in ("bake", "kl", "refusal", "restore", "total"))
        split = sum(row["trials"][0][part] for part in ("bake", "kl", "refusal", "restore"))
        assert split <= row["trials"][0]["total"]
        assert all(0 < t["tokens"] <= plan.evaluation * plan.new_tokens for t in row["trials"])
        assert row["refusal_tokens_per_s"] > 0
    assert trials["fastest_batch_size"] in plan.batch_sizes

    workers = result["workers"]
    assert workers["1_worker"]["completed"] == plan.worker_trials[0]
    assert workers["2_workers"]["completed"] == plan.worker_trials[1]
    assert workers["1_worker"]["exit_codes"] == [0] and workers["2_workers"]["exit_codes"] == [0, 0]
    assert workers["two_over_one"] > 0
    assert "skipped" in result["heretic"]


def test_budget_shares_what_earlier_parts_leave():
    now = [100.0]
    budget = Budget(100, {"a": 1, "b": 3, "c": 1}, clock=lambda: now[0])
    assert budget.deadline("a") == pytest.approx(120.0)  # a fifth of 100 s
    now[0] = 105.0  # "a" finished early: the others share 95 s
    assert budget.deadline("b") == pytest.approx(105.0 + 95 * 3 / 4)
    now[0] = 250.0  # past the end: the last part gets no time
    assert budget.deadline("c") == 250.0


def test_bundle_wheels_install_offline_into_a_venv_that_still_sees_this_interpreter(tmp_path):
    project = tmp_path / "carried"
    (project / "carried").mkdir(parents=True)
    (project / "carried" / "__init__.py").write_text("WHERE = 'the bundle'\n")
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "carried"
        version = "1.0"
    """))
    wheels = tmp_path / "bundle" / "wheels"
    (wheels / "ours").mkdir(parents=True)
    (wheels / "common").mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--wheel-dir", str(wheels / "ours"), str(project)], check=True)

    pythons = install(tmp_path / "bundle", tmp_path / "venvs")

    assert set(pythons) == {"ours"}  # no heretic wheels, no heretic venv
    probe = "import carried, yaml; print(carried.WHERE, carried.__file__)"
    shown = subprocess.run([str(pythons["ours"]), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert shown.startswith("the bundle " + str(tmp_path / "venvs" / "ours"))
    assert subprocess.run([sys.executable, "-c", "import carried"], capture_output=True).returncode != 0
