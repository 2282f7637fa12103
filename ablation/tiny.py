"""Tiny random models of every supported architecture, built offline from configs.

They run the same code paths as real checkpoints (same modules, same layouts) in
milliseconds on a CPU, which is what tests, the demo and smoke benchmarks need.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "How do I bake bread at home with simple ingredients?",
    "Write a short poem about the sea and the wind.",
    "Explain how a bicycle gear works, step by step.",
    "I cannot help with that request, sorry.",
    "Sure, here is a plan you can follow for the garden.",
    "Tell me how to break into a locked car without the key.",
    "system user assistant think",
]

HIDDEN, INTERMEDIATE, LAYERS = 64, 96, 4
_HYBRID = dict(
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
_EXTRA = {
    "qwen3_moe": dict(_MOE, mlp_only_layers=[0]),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
    "qwen3_5_text": _HYBRID,
    "qwen3_5_moe_text": dict(_HYBRID, **_MOE, shared_expert_intermediate_size=32),
    "qwen3_next": dict(_HYBRID, **_MOE, shared_expert_intermediate_size=32),
    "gemma2": dict(sliding_window=16),
    "gemma3_text": dict(sliding_window=16),
}
TEXT_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe", "gpt_oss",
    "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "gemma2", "gemma3_text",
)
MULTIMODAL_TYPES = ("qwen3_5",)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(model_type: str, vocab_size: int):
    """A config of ``model_type`` with a 64-wide, 4-layer language model."""
    text = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=0, eos_token_id=2,
        tie_word_embeddings=False,
    )
    if model_type == "qwen3_5":
        vision = dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        )
        return CONFIG_MAPPING[model_type](text_config=dict(text, **_HYBRID), vision_config=vision)
    return CONFIG_MAPPING[model_type](**text, **_EXTRA.get(model_type, {}))


def tiny_model(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random model of ``model_type`` and the tiny tokenizer, ready to run on the CPU."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(model_type, len(tokenizer))
    torch.manual_seed(seed)
    cls = AutoModelForImageTextToText if model_type in MULTIMODAL_TYPES else AutoModelForCausalLM
    model: PreTrainedModel = cls.from_config(config, dtype=dtype)
    _spread_norm_weights(model, seed)
    return model.eval(), tokenizer


def _spread_norm_weights(model: torch.nn.Module, seed: int) -> None:
    # Fresh norms are all ones (or zeros for Gemma's 1 + w), which would hide a missing
    # post-norm correction in tests; give them a random spread like trained models have.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                noise = torch.rand(param.shape, generator=generator) * 0.8 - 0.4
                param.add_(noise.to(param.dtype))
