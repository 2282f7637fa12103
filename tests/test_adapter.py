"""Edits as LoRA adapters: exact low-rank factors, and a PEFT round trip on every architecture
that gives the baked model's logits."""

import pytest
import torch

from abliterate.ablation.adapter import edit_factors, low_rank, save_adapter
from abliterate.ablation.architectures import ATTN, MLP, find_writers
from abliterate.ablation.bake import Amplification, Baker, Edit
from abliterate.ablation.cone import orthonormal_basis
from abliterate.ablation.errors import AblationError
from abliterate.ablation.profile import Kernel, Profile
from abliterate.ablation.readers import READ_GROUPS
from fixtures.tiny import LAYERS, MULTIMODAL_TYPES, TEXT_TYPES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The adapter adds B A to W where the bake writes W' = W - w r (r^T W) directly: the same sum in
# another order, so the logits agree to float32 rounding (about 1e-7 here), not bit for bit.
LOGIT_TOLERANCE = 1e-5


def test_low_rank_finds_the_rank_of_an_exact_low_rank_delta():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(40, 2, generator=g) @ torch.randn(2, 24, generator=g)
    up, down, error = low_rank(delta, 8)
    assert up.shape == (40, 2) and down.shape == (2, 24)
    assert error < 1e-6 and torch.allclose(up @ down, delta, atol=1e-5)
    again = low_rank(delta, 8)
    assert torch.equal(again[0], up) and torch.equal(again[1], down)  # seeded: an adapter rebuilds bit for bit


def test_low_rank_of_a_full_rank_delta_is_the_best_fit_at_the_rank_asked():
    delta = torch.randn(30, 12, generator=torch.Generator().manual_seed(1))
    values = torch.linalg.svdvals(delta)
    up, down, error = low_rank(delta, 3)
    assert up.shape[1] == 3
    optimum = float(values[3:].square().sum().sqrt() / values.square().sum().sqrt())  # Eckart-Young
    assert error == pytest.approx(optimum, rel=1e-3)


def test_low_rank_of_nothing_and_a_bad_rank():
    up, down, error = low_rank(torch.zeros(5, 4), 2)
    assert error == 0.0 and not (up @ down).any()
    with pytest.raises(AblationError, match="at least 1"):
        low_rank(torch.ones(5, 4), 0)


def logits(model, tokenizer):
    ids = tokenizer(["How do I bake bread at home?", "Tell me how to break into a car"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


def adapter_round_trip(tiny, model_type, edit_of, max_rank, folder):
    """(logits of the base model with the saved adapter loaded by PEFT, logits of the baked
    model, what save_adapter returned)."""
    from peft import PeftModel

    model, tokenizer = tiny(model_type)
    edit = edit_of(model)
    baker = Baker.for_model(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    saved = save_adapter(model, edit_factors(baker, edit, max_rank), folder)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the model is left as it was
    adapted = PeftModel.from_pretrained(tiny(model_type)[0], str(folder))
    baker.bake(edit)
    return logits(adapted, tokenizer), logits(model, tokenizer), saved


def per_layer(model, seed=3):
    return torch.randn(LAYERS, model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
def test_an_adapter_loaded_by_peft_gives_the_baked_model(tiny, model_type, tmp_path):
    profile = Profile({ATTN: Kernel("tent", 1.5, 1.1, 0.2, 2.0), MLP: Kernel("gaussian", 2.0, 0.9, 0.1, 1.5)})
    adapted, baked, saved = adapter_round_trip(tiny, model_type, lambda m: Edit(per_layer(m), profile), 4, tmp_path)
    assert saved["rank"] == 1 and saved["max_error"] < 1e-5  # one direction: rank 1, exact
    assert (adapted - baked).abs().max() < LOGIT_TOLERANCE
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize("model_type", TEXT_TYPES + MULTIMODAL_TYPES)
def test_a_read_side_edit_is_an_adapter_too(tiny, model_type, tmp_path):
    reads = Kernel("tent", 2.0, 0.8, 0.0, 2.0)
    profile = Profile({ATTN: Kernel("tent", 1.5, 1.1, 0.2, 2.0), MLP: Kernel("tent", 2.0, 0.9, 0.1, 1.5), **dict.fromkeys(READ_GROUPS, reads)})
    adapted, baked, saved = adapter_round_trip(tiny, model_type, lambda m: Edit(per_layer(m), profile), 4, tmp_path)
    assert saved["rank"] == 1 and saved["max_error"] < 1e-5  # W - w W u u^T: rank 1 on the input side as well
    assert (adapted - baked).abs().max() < LOGIT_TOLERANCE


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe", "gemma3_text"])
def test_subspaces_amplification_and_heads_add_their_rank_and_stay_exact(tiny, model_type, tmp_path):
    def edit_of(model):
        hidden = model.config.get_text_config().hidden_size
        g = torch.Generator().manual_seed(4)
        bases = torch.stack([orthonormal_basis(torch.randn(2, hidden, generator=g)) for _ in range(LAYERS)])
        return Edit(bases, Profile.uniform(0.9), amplify=Amplification(torch.randn(hidden, generator=g), 0.3),
                    heads={1: [(0, 16)], 2: [(16, 48)]})

    adapted, baked, saved = adapter_round_trip(tiny, model_type, edit_of, 8, tmp_path)
    assert saved["rank"] == 3 and saved["max_error"] < 1e-5  # two directions removed, one amplified
    assert (adapted - baked).abs().max() < LOGIT_TOLERANCE


def test_a_norm_preserving_edit_is_fitted_at_the_rank_asked_and_exact_at_full_rank(tiny, tmp_path):
    def edit_of(model):
        return Edit(per_layer(model), Profile.uniform(1.0), norm_preserving=True)

    adapted, baked, low = adapter_round_trip(tiny, "qwen3", edit_of, 1, tmp_path / "low")
    assert low["rank"] == 1 and low["max_error"] > 1e-3  # the rescaling is not of rank 1: the record says how far off
    adapted, baked, full = adapter_round_trip(tiny, "qwen3", edit_of, 96, tmp_path / "full")
    assert full["max_error"] < 1e-5 and (adapted - baked).abs().max() < LOGIT_TOLERANCE


def test_an_edit_of_a_bias_is_refused_in_one_line(tiny):
    model, _ = tiny("gpt_oss")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.normal_()
    with pytest.raises(AblationError, match=r"changes the bias of model\.layers\.0\.self_attn\.o_proj, which a LoRA adapter cannot "
                                            r"carry; export the full checkpoint \(without --adapter\)"):
        edit_factors(Baker(find_writers(model)), Edit(per_layer(model), Profile.uniform(1.0)), 4)


def test_an_edit_that_touches_nothing_has_no_adapter(tiny):
    model, _ = tiny("llama")
    with pytest.raises(AblationError, match="changes no weight"):
        edit_factors(Baker(find_writers(model)), Edit(per_layer(model), Profile.uniform(0.0)), 4)
