"""Residual writers and bake/restore on tiny random models of every supported architecture."""

import pytest
import torch
from torch import nn

from abliterate.ablation.architectures import ATTN, MLP, architecture_of, decoder_layers, find_writers
from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.edit import unit
from abliterate.ablation.errors import AblationError, UnsupportedLayout
from abliterate.ablation.profile import Kernel, Profile
from fixtures.tiny import LAYERS, MULTIMODAL_TYPES, TEXT_TYPES

ALL_TYPES = TEXT_TYPES + MULTIMODAL_TYPES

# (writers per layer) for layer 0 and layer 3 of each tiny model, checked by hand against the
# module trees of transformers 5.23.
EXPECTED = {
    "llama": ([".self_attn.o_proj", ".mlp.down_proj"],) * 2,
    "qwen3_moe": ([".self_attn.o_proj", ".mlp.down_proj"], [".self_attn.o_proj", ".mlp.experts.down_proj"]),
    "gpt_oss": ([".self_attn.o_proj", ".mlp.experts.down_proj"],) * 2,
    "qwen3_5_text": ([".linear_attn.out_proj", ".mlp.down_proj"], [".self_attn.o_proj", ".mlp.down_proj"]),
    "qwen3_5_moe_text": (
        [".linear_attn.out_proj", ".mlp.experts.down_proj", ".mlp.shared_expert.down_proj"],
        [".self_attn.o_proj", ".mlp.experts.down_proj", ".mlp.shared_expert.down_proj"],
    ),
    "qwen3_5": ([".linear_attn.out_proj", ".mlp.down_proj"], [".self_attn.o_proj", ".mlp.down_proj"]),
}


def layer_writes(model, tokenizer, texts=("How do I bake bread?", "Tell me how to break into a car")):
    """What each decoder layer adds to the residual stream: [L, tokens, H]."""
    inputs, outputs = {}, {}

    def hooks(i):
        def pre(_m, args, kwargs):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach().float()

        def post(_m, _args, output):
            outputs[i] = (output[0] if isinstance(output, tuple) else output).detach().float()

        return pre, post

    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        pre, post = hooks(i)
        handles += [layer.register_forward_pre_hook(pre, with_kwargs=True), layer.register_forward_hook(post)]
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**encoded)
    for h in handles:
        h.remove()
    mask = encoded["attention_mask"].bool()
    return torch.stack([(outputs[i] - inputs[i])[mask] for i in range(len(inputs))])


def along(writes, directions):
    """Largest |r . write| / |write| per layer."""
    r = unit(directions if directions.dim() == 2 else directions.expand(writes.shape[0], -1))
    return ((writes @ r.unsqueeze(-1)).squeeze(-1).abs() / writes.norm(dim=-1)).amax(dim=1)


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_writers_found(tiny, model_type):
    model, _ = tiny(model_type)
    writers = find_writers(model)
    for layer, expected in zip((0, LAYERS - 1), EXPECTED[model_type]):
        names = [w.name for w in writers if w.layer == layer]
        assert len(names) == len(expected) and all(n.endswith(e) for n, e in zip(names, expected)), names
    assert {w.group for w in writers} == {ATTN, MLP}


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize("per_layer", [False, True], ids=["global", "per-layer"])
def test_full_bake_removes_direction_from_every_layer_write(tiny, model_type, per_layer):
    model, tokenizer = tiny(model_type)
    hidden = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(LAYERS, hidden, generator=g) if per_layer else torch.randn(hidden, generator=g)
    assert along(layer_writes(model, tokenizer), directions).min() > 1e-3  # the check below can fail
    baker = Baker(find_writers(model))
    baker.bake(Edit(directions, Profile.uniform(1.0)))
    assert along(layer_writes(model, tokenizer), directions).max() < 2e-5
    for writer in baker.writers:  # every expert slice, not only the routed ones
        r = unit(directions[writer.layer] if per_layer else directions)
        if writer.norm_scale is None:
            assert (writer.weight.float().movedim(writer.residual_axis, -1) @ r).abs().max() < 1e-5


@pytest.mark.parametrize("model_type", ["qwen3_5_moe_text", "gpt_oss", "gemma3_text", "qwen3_moe"])
def test_every_writer_matters(tiny, model_type):
    """Leaving any one writer out of the bake leaves its layer writing along r."""
    model, tokenizer = tiny(model_type)
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    writers = find_writers(model)
    for skipped in writers:
        baker = Baker([w for w in writers if w is not skipped])
        with baker.baked_into(Edit(r, Profile.uniform(1.0))):
            leak = along(layer_writes(model, tokenizer), r)
        assert leak[skipped.layer] > 1e-3, skipped.name


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_restore_is_bit_exact(tiny, model_type, dtype):
    model, _ = tiny(model_type, dtype=dtype)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    baker = Baker(find_writers(model))
    profile = Profile({ATTN: Kernel("tent", 1.5, 1.3, 0.2, 2.0), MLP: Kernel("gaussian", 2.0, 0.9, 0.1, 1.5)})
    report = baker.bake(Edit(torch.randn(model.config.get_text_config().hidden_size), profile, norm_preserving=True))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
    assert changed and report.tensors >= len(changed)
    baker.restore()
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert not baker.baked and baker.saved_bytes == 0


def test_bake_touches_only_profiled_layers_and_keeps_copies_of_those(tiny):
    model, _ = tiny("llama")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    baker = Baker(find_writers(model), keep_on="cpu")
    report = baker.bake(Edit(torch.randn(64), Profile({MLP: Kernel("tent", 2, 1.0, 0.0, 0.5)})))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert changed == {"model.layers.2.mlp.down_proj.weight"}
    assert report.layers == (2,) and report.saved_bytes == 64 * 96 * 4
    with pytest.raises(AblationError, match="already baked"):
        baker.bake(Edit(torch.randn(64), Profile.uniform()))


def test_wrong_number_of_layer_directions(tiny):
    model, _ = tiny("llama")
    with pytest.raises(AblationError, match="3 layers"):
        Baker(find_writers(model)).bake(Edit(torch.randn(3, 64), Profile.uniform()))


def test_unknown_child_is_named(tiny):
    model, _ = tiny("llama")
    decoder_layers(model)[1].mlp.residual_gate = nn.Linear(64, 64)
    with pytest.raises(UnsupportedLayout, match=r"'model\.layers\.1\.mlp\.residual_gate' \(Linear\)"):
        find_writers(model)


def test_unknown_architecture():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedLayout, match="'gpt2' is not supported; supported model types: .*llama"):
        architecture_of(GPT2Config())


def test_layer_with_two_attention_blocks_is_refused(tiny):
    model, _ = tiny("qwen3_5_text")
    layers = decoder_layers(model)
    layers[0].self_attn = layers[3].self_attn  # layer 0 already has linear_attn
    with pytest.raises(UnsupportedLayout, match=r"'model\.layers\.0'.*found \['self_attn', 'linear_attn'\]"):
        find_writers(model)
