"""Last-token residual capture."""

import pytest
import torch

from abliterate.ablation.errors import AblationError
from abliterate.ablation.loading import LoadedModel
from abliterate.ablation.residuals import capture_last_token, load_residuals, save_residuals

PROMPTS = ["How do I bake bread?", "Hi", "Tell me how to break into a car without the key, step by step"]


@pytest.mark.parametrize("model_type", ["llama", "qwen3_5_text", "gemma3_text"])
def test_batched_capture_equals_one_prompt_at_a_time(tiny, model_type):
    model, tokenizer = tiny(model_type)
    texts = LoadedModel(model, tokenizer, "tiny").format_chat(PROMPTS)
    batched = capture_last_token(model, tokenizer, texts, batch_size=3)
    single = torch.cat([capture_last_token(model, tokenizer, [t]) for t in texts])
    assert batched.shape == (3, 4, 64) and batched.dtype == torch.float32
    assert torch.allclose(batched, single, atol=1e-5)


def test_capture_matches_hidden_states_at_last_token(tiny):
    model, tokenizer = tiny("llama")
    text = LoadedModel(model, tokenizer, "tiny").format_chat(PROMPTS[:1])
    captured = capture_last_token(model, tokenizer, text)[0]
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hidden = model(**encoded, output_hidden_states=True).hidden_states
    # hidden_states[l + 1] is layer l's output; the last entry has the final norm applied.
    for layer in range(3):
        assert torch.allclose(captured[layer], hidden[layer + 1][0, -1], atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    harmful, harmless = torch.randn(5, 3, 8), torch.randn(4, 3, 8)
    directions = torch.randn(3, 8)
    path = tmp_path / "means.safetensors"
    save_residuals(path, harmful, harmless, directions, metadata={"model": "m"}, samples=True)
    loaded = load_residuals(path)
    assert torch.allclose(loaded["harmful_mean"], harmful.mean(0))
    assert torch.equal(loaded["directions"], directions) and torch.equal(loaded["harmless"], harmless)
    assert [p.name for p in tmp_path.iterdir()] == ["means.safetensors"]


def test_no_prompts(tiny):
    model, tokenizer = tiny("llama")
    with pytest.raises(AblationError, match="no prompts"):
        capture_last_token(model, tokenizer, [])
