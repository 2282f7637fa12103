"""The abliterate command, run as a real subprocess."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from objectives.prompts import DEMO_HARMFUL, DEMO_HARMLESS, demo_prompts


def abliterate(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *map(str, args)], capture_output=True, text=True,
        timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


@pytest.fixture
def model_dir(tmp_path, tiny):
    model, tokenizer = tiny("qwen3_moe")
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_inspect_prints_every_writer(model_dir):
    result = abliterate("inspect", "--model", model_dir)
    assert result.returncode == 0, result.stderr
    assert "model.layers.0.mlp.down_proj" in result.stdout
    assert "model.layers.3.mlp.experts.down_proj" in result.stdout and "4x64x32" in result.stdout
    assert "4 layers, 8 writers (attn 4, mlp 4), 12 routed experts" in result.stdout


@pytest.mark.parametrize("method", ["mean", "probe"])
def test_directions_writes_unit_directions(model_dir, tmp_path, method):
    out = tmp_path / "directions.safetensors"
    result = abliterate("directions", "--model", model_dir, "--method", method, "--out", out, "--no-thinking",
                        "--harmful", _prompt_file(tmp_path, DEMO_HARMFUL), "--harmless", _prompt_file(tmp_path, DEMO_HARMLESS))
    assert result.returncode == 0, result.stderr
    tensors = load_file(out)
    assert tensors["directions"].shape == (4, 64)
    assert torch.allclose(tensors["directions"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert tensors["harmful_mean"].shape == (4, 64) and "harmful" not in tensors
    assert ("probe cross-validated accuracy" in result.stdout) == (method == "probe")


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "--model", "/no/such/model"], "error: model path /no/such/model does not exist"),
        (["inspect", "--model", "someorg/somemodel"], "error: cannot load someorg/somemodel: not a local path"),
        (["directions", "--model", "x", "--harmful", "/no/file.txt", "--harmless", "/no/file.txt", "--out", "o"],
         "error: prompt file /no/file.txt does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    result = abliterate(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr


def test_empty_prompt_file(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    result = abliterate("directions", "--model", model_dir, "--harmful", empty, "--harmless", empty, "--out", tmp_path / "o")
    assert result.returncode == 2 and "has no prompts" in result.stderr
    assert not (tmp_path / "o").exists()


def test_demo_runs_end_to_end():
    result = abliterate("demo")
    assert result.returncode == 0, result.stderr
    assert "reloaded logits match: True" in result.stdout
    assert "bit-exact: True" in result.stdout and "not yet" in result.stdout


def _prompt_file(folder, name):
    path = folder / name
    path.write_text("\n".join(demo_prompts(name)))
    return path
