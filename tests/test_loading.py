"""Loading from folders and files, multimodal classes, chat formatting and bad input."""

import json

import pytest
import torch

from abliterate.ablation.errors import ModelLoadError, UnsupportedLayout
from abliterate.ablation.loading import LoadedModel, load_model


@pytest.fixture
def saved(tmp_path, tiny):
    def save(model_type, name="model"):
        model, tokenizer = tiny(model_type)
        folder = tmp_path / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, model

    return save


def test_local_folder_in_chosen_dtype(saved):
    folder, original = saved("qwen3")
    loaded = load_model(str(folder), dtype="bf16", device="cpu")
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM"
    assert loaded.model.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    assert loaded.tokenizer.pad_token is not None
    fp32 = load_model(str(folder), dtype="auto", device="cpu")
    assert fp32.model.dtype == torch.float32  # auto means fp32 on the CPU
    assert torch.equal(fp32.model.lm_head.weight, original.lm_head.weight)


def test_multimodal_config_loads_multimodal_class(saved):
    folder, _ = saved("qwen3_5")
    loaded = load_model(str(folder), device="cpu")
    assert type(loaded.model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert any(name.startswith("model.visual.") for name, _ in loaded.model.named_parameters())


def test_chat_format_and_thinking_switch(tiny):
    model, tokenizer = tiny("qwen3")
    loaded = LoadedModel(model, tokenizer, "tiny")
    plain, = loaded.format_chat(["Hi"], system="Be brief.")
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    off, = loaded.format_chat(["Hi"], enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tokenizer.chat_template = None
    with pytest.raises(ModelLoadError, match="no chat template"):
        loaded.format_chat(["Hi"])


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./relative/nope")


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF model"):
        load_model(str(fake))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(str(tmp_path))


def test_architecture_we_cannot_edit_fails_before_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path)  # no weights: must fail before reading them
    with pytest.raises(UnsupportedLayout, match="'gpt2' is not supported"):
        load_model(str(tmp_path))


def test_bad_dtype(saved):
    folder, _ = saved("llama")
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        load_model(str(folder), dtype="int3")
