"""Export: complete folders that reload to the same logits, written atomically."""

import os

import pytest
import torch

from abliterate.ablation import Baker, Profile, export_checkpoint, find_writers, load_model
from abliterate.ablation.bake import Edit
from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel


def logits(model, tokenizer):
    encoded = tokenizer(["Tell me how to bake bread", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**encoded).logits


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe", "gpt_oss", "gemma3_text", "qwen3_5"])
def test_baked_export_reloads_with_same_logits_and_class(tiny, tmp_path, model_type):
    model, tokenizer = tiny(model_type)
    before = logits(model, tokenizer)
    Baker(find_writers(model)).bake(Edit(torch.randn(model.config.get_text_config().hidden_size), Profile.uniform(1.0)))
    baked = logits(model, tokenizer)
    assert not torch.allclose(before, baked)

    out = export_checkpoint(LoadedModel(model, tokenizer, "tiny"), tmp_path / "edited")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert any(name.endswith(".safetensors") for name in os.listdir(out))
    reloaded = load_model(str(out), device="cpu")
    assert type(reloaded.model) is type(model)
    assert torch.allclose(logits(reloaded.model, reloaded.tokenizer), baked, atol=1e-5)
    if model_type == "qwen3_5":
        assert sum(n.startswith("model.visual.") for n, _ in reloaded.model.named_parameters()) > 0


def test_existing_target_is_refused_then_replaced_whole(tiny, tmp_path):
    model, tokenizer = tiny("llama")
    loaded = LoadedModel(model, tokenizer, "tiny")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(AblationError, match="already exists"):
        export_checkpoint(loaded, out)
    assert os.listdir(out) == ["keep.txt"]
    export_checkpoint(loaded, out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "config.json" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or retired folders left


def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny("llama")

    def fail_mid_write(folder, **_):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # fault injection: the user hits Ctrl-C mid-shard

    monkeypatch.setattr(tokenizer, "save_pretrained", fail_mid_write)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(LoadedModel(model, tokenizer, "tiny"), tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_staging_left_by_a_killed_export_is_removed_by_the_next_export_there(tiny, tmp_path):
    """A SIGKILLed export leaves its hidden staging folder (gigabytes on a real model): the next
    export into that folder, of any target, removes it and says so; a live export's staging is
    left alone."""
    import socket
    import subprocess
    import sys

    model, tokenizer = tiny("llama")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    host = socket.gethostname()
    stale = tmp_path / f".trial-3.partial-{host}-{dead.pid}-abc123"  # another target than this export's
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 2**20)
    live = tmp_path / f".out.partial-{host}-{os.getpid()}-def456"
    live.mkdir()
    said = []
    export_checkpoint(LoadedModel(model, tokenizer, "tiny"), tmp_path / "out", log=said.append)
    assert sorted(os.listdir(tmp_path)) == [live.name, "out"]
    assert said == [f"removed {stale.name} (1 MiB), left in {tmp_path} by an export that was killed"]
