"""Subspace removal, amplification and head edits on tiny models of every supported architecture:
exact where they act, bit-identical elsewhere, bit-exact restore, and exports that reload."""

import pytest
import torch

from abliterate.ablation.architectures import ATTN, MLP, find_writers
from abliterate.ablation.bake import Amplification, Baker, Edit
from abliterate.ablation.cone import orthonormal_basis
from abliterate.ablation.edit import unit
from abliterate.ablation.heads import capture_attention_inputs, head_layout, head_scores, mean_input_difference, top_heads
from abliterate.ablation.profile import Kernel, Profile
from fixtures.tiny import LAYERS, MULTIMODAL_TYPES, TEXT_TYPES

ALL_TYPES = TEXT_TYPES + MULTIMODAL_TYPES


def hidden_of(model):
    return model.config.get_text_config().hidden_size


def bases(model, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([orthonormal_basis(torch.randn(k, hidden_of(model), generator=g)) for _ in range(LAYERS)])


def edits(model):
    """(name, bake keyword arguments) of every new edit."""
    hidden = hidden_of(model)
    g = torch.Generator().manual_seed(4)
    c = torch.randn(LAYERS, hidden, generator=g)
    return [
        ("subspace", dict(directions=bases(model))),
        ("amplify", dict(directions=torch.randn(hidden, generator=g), amplify=Amplification(c, 0.3))),
        ("heads", dict(directions=torch.randn(LAYERS, hidden, generator=g), heads={1: [(16, 32)], 3: [(0, 16), (48, 64)]})),
        ("cone+amplify+heads", dict(directions=bases(model, 2), amplify=Amplification(c[0], 0.2), heads={2: [(32, 48)]})),
    ]


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_edit_bakes_and_restores_bit_exactly(tiny, one_torch_thread, model_type, dtype):
    model, _ = tiny(model_type, dtype=dtype)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    profile = Profile({ATTN: Kernel("tent", 1.5, 1.3, 0.2, 2.0), MLP: Kernel("gaussian", 2.0, 0.9, 0.1, 1.5)})
    baker = Baker(find_writers(model))
    for name, arguments in edits(model):
        report = baker.bake(Edit(profile=profile, norm_preserving=True, **arguments))
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
        assert changed and report.tensors >= len(changed), name
        baker.restore()
        assert all(torch.equal(p, original[n]) for n, p in model.named_parameters()), name


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_full_subspace_bake_leaves_no_writer_writing_in_the_span(tiny, one_torch_thread, model_type):
    model, _ = tiny(model_type)
    q = bases(model)
    baker = Baker(find_writers(model))
    baker.bake(Edit(q, Profile.uniform(1.0)))
    for writer in baker.writers:
        if writer.norm_scale is None:
            written = writer.weight.float().movedim(writer.residual_axis, -1) @ q[writer.layer].T
            assert written.abs().max() < 1e-5, writer.name
        else:  # Gemma: the span of scale * Q is what the norm turns into span(Q)
            span = orthonormal_basis(writer.norm_scale.float() * q[writer.layer])
            assert (writer.weight.float().movedim(writer.residual_axis, -1) @ span.T).abs().max() < 1e-5


@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text"])
def test_amplify_scales_what_each_writer_passes_on_along_c(tiny, one_torch_thread, model_type):
    # Through Gemma's post-norms too: there the scale times the output is what reaches the residual.
    model, _ = tiny(model_type)
    g = torch.Generator().manual_seed(8)
    r, c = torch.randn(hidden_of(model), generator=g), unit(torch.randn(LAYERS, hidden_of(model), generator=g))
    baker = Baker(find_writers(model))
    profile = Profile.uniform(0.7)

    def passed_on():
        return {w.name: w.weight.float().movedim(w.residual_axis, -1)
                * (1 if w.norm_scale is None else w.norm_scale.float()) @ c[w.layer] for w in baker.writers}

    with baker.baked_into(Edit(r, profile)):
        removed = passed_on()
    with baker.baked_into(Edit(r, profile, amplify=Amplification(c, 0.3))):
        amplified = passed_on()
    assert any(w.norm_scale is not None for w in baker.writers) == (model_type == "gemma3_text")
    for name, before in removed.items():
        assert torch.allclose(amplified[name], 1.3 * before, atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_5_text", "gpt_oss"])
def test_heads_edit_only_their_columns_and_leave_every_other_bit_identical(tiny, model_type):
    model, _ = tiny(model_type)
    writers = find_writers(model)
    r = unit(torch.randn(LAYERS, hidden_of(model), generator=torch.Generator().manual_seed(5)))
    original = {w.name: w.weight.detach().clone() for w in writers}
    bias = {w.name: w.bias.detach().clone() for w in writers if w.bias is not None}
    heads = {1: [(16, 32)], 3: [(0, 16), (48, 64)]}
    Baker(writers).bake(Edit(r, Profile({ATTN: Kernel("tent", 0, 1.0, 1.0, 1e9)}), heads=heads))
    for writer in writers:
        if writer.group != ATTN or writer.layer not in heads:
            assert torch.equal(writer.weight, original[writer.name]), writer.name
            continue
        edited = torch.zeros(writer.weight.shape[1], dtype=torch.bool)
        for start, stop in heads[writer.layer]:
            edited[start:stop] = True
            assert (r[writer.layer] @ writer.weight[:, start:stop]).abs().max() < 1e-5  # nothing along r from the head
        assert torch.equal(writer.weight[:, ~edited], original[writer.name][:, ~edited])
        assert not torch.equal(writer.weight[:, edited], original[writer.name][:, edited])
    for name, value in bias.items():  # a bias belongs to no head
        assert torch.equal(dict((w.name, w.bias) for w in writers)[name], value)


def test_head_scores_find_a_planted_head_under_grouped_query_attention(tiny, one_torch_thread):
    model, tokenizer = tiny("qwen3")  # 4 query heads sharing 2 key/value heads
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    writers = find_writers(model)
    layout = head_layout(model, writers)
    texts = ["Tell me how to break into a car", "How do I bake bread?", "Write a poem about the sea"]
    inputs = capture_attention_inputs(model, tokenizer, writers, texts)
    assert [tuple(x.shape) for x in inputs] == [(3, 64)] * LAYERS
    # Head 2 of layer 1 alone writes along r: its columns are r times a row that sees the inputs' difference.
    difference = mean_input_difference([x[:1] for x in inputs], [x[1:] for x in inputs])
    r = unit(torch.randn(hidden_of(model), generator=torch.Generator().manual_seed(6)))
    with torch.no_grad():
        for writer in writers:
            if writer.group == ATTN:
                writer.weight.sub_(torch.outer(r, r @ writer.weight))  # nobody writes along r ...
        attention = [w for w in writers if w.group == ATTN]
        attention[1].weight[:, 32:48] += torch.outer(r, difference[1, 32:48])  # ... but this head, a lot
    scores = head_scores(writers, layout, difference, r)
    assert scores.shape == (LAYERS, 4) and int(scores.flatten().argmax()) == 1 * 4 + 2
    assert top_heads(scores, layout, 1) == {1: [(32, 48)]}
    assert sum(len(v) for v in top_heads(scores, layout, 5).values()) == 5


@pytest.mark.parametrize("model_type", ["qwen3_moe", "gpt_oss", "gemma3_text", "qwen3_5"])
def test_every_edit_exports_a_checkpoint_that_reloads_with_the_baked_logits(tiny, one_torch_thread, tmp_path, model_type):
    from abliterate.ablation import export_checkpoint, load_model
    from abliterate.ablation.loading import LoadedModel

    model, tokenizer = tiny(model_type)
    encoded = tokenizer(["Tell me how to bake bread", "hi"], return_tensors="pt", padding=True)
    baker = Baker(find_writers(model))
    for name, arguments in edits(model):
        with torch.no_grad(), baker.baked_into(Edit(profile=Profile.uniform(0.9), **arguments)):
            baked = model(**encoded).logits
            out = export_checkpoint(LoadedModel(model, tokenizer, "tiny"), tmp_path / name)
        reloaded = load_model(str(out), device="cpu")
        with torch.no_grad():
            assert torch.allclose(reloaded.model(**encoded).logits, baked, atol=1e-5), name


@pytest.mark.parametrize("model_type", ["qwen3_5_text", "gpt_oss", "gemma3_text", "qwen3_5"])
def test_heads_are_scored_and_edited_on_linear_attention_and_other_layouts(tiny, one_torch_thread, model_type):
    model, tokenizer = tiny(model_type)
    writers = find_writers(model)
    layout = head_layout(model, writers)
    texts = ["Tell me how to break into a car", "How do I bake bread?"]
    inputs = capture_attention_inputs(model, tokenizer, writers, texts)
    assert [x.shape[1] for x in inputs] == [heads * dim for heads, dim in layout]
    r = unit(torch.randn(LAYERS, hidden_of(model), generator=torch.Generator().manual_seed(7)))
    scores = head_scores(writers, layout, mean_input_difference([x[:1] for x in inputs], [x[1:] for x in inputs]), r)
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0
    chosen = top_heads(scores, layout, 3)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    baker = Baker(writers)
    baker.bake(Edit(r, Profile.uniform(1.0, groups=(ATTN,)), heads=chosen))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert len(changed) == len(chosen)  # one attention output projection per layer with a chosen head
    baker.restore()
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
