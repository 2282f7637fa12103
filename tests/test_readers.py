"""Read-side edits on a tiny model of every supported architecture: the readers found, the
direction removed from what each one reads (through its input norm) and nowhere else, and the
original bits back after restore."""

import pytest
import torch

from abliterate.ablation.architectures import architecture_of, decoder_layers, find_writers
from abliterate.ablation.bake import Baker, Edit
from abliterate.ablation.edit import unit
from abliterate.ablation.errors import AblationError, UnsupportedLayout
from abliterate.ablation.profile import Kernel, Profile
from abliterate.ablation.readers import ATTN_READ, MLP_READ, READ_GROUPS, find_readers
from fixtures.tiny import LAYERS, MULTIMODAL_TYPES, TEXT_TYPES, tiny_model

ALL_TYPES = TEXT_TYPES + MULTIMODAL_TYPES
READ_ONLY = Profile(kernels=dict.fromkeys(READ_GROUPS, Kernel(peak=0, peak_weight=1.0, floor_weight=1.0, falloff=LAYERS)))


@pytest.fixture(scope="module", params=ALL_TYPES)
def model(request):
    return tiny_model(request.param)[0]


def test_every_layer_reads_through_its_attention_and_its_mlp(model):
    readers = find_readers(model)
    for layer in range(LAYERS):
        groups = {r.group for r in readers if r.layer == layer}
        assert groups == {ATTN_READ, MLP_READ}, f"layer {layer}: {groups}"
    names = {r.name.rsplit(".", 1)[-1] for r in readers}
    assert not names & {"gate", "router", "shared_expert_gate", "o_proj", "out_proj", "down_proj"}  # routers and writers are not read-edited
    hidden = model.config.get_text_config().hidden_size
    assert all(r.weight.shape[r.residual_axis] == hidden and r.bias is None and r.norm_scale is not None for r in readers)


def test_the_input_norm_scale_is_the_one_the_norm_applies(model):
    """What the edit direction is built from (the architecture's norm scale times r) points where
    the layer's own input norm sends r."""
    arch = architecture_of(model.config)
    r = torch.randn(model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(0))
    for layer in decoder_layers(model):
        for norm in ("input_layernorm", arch.mlp_input_norm):
            module = getattr(layer, norm)
            with torch.no_grad():
                passed = module(r.view(1, 1, -1)).view(-1).float()
            assert torch.allclose(unit(passed), unit(arch.norm_scale(module.weight) * r), atol=1e-5)


def test_a_read_edit_at_full_weight_leaves_no_reader_seeing_the_direction_and_no_writer_touched(model):
    baker = Baker.for_model(model)
    r = torch.randn(model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(1))
    writers = {w.name: w.weight.detach().clone() for w in find_writers(model)}
    with baker.baked_into(Edit(r, READ_ONLY)) as report:
        assert report.layers == tuple(range(LAYERS))
        for reader in find_readers(model):
            u = unit(reader.norm_scale * r)
            seen = torch.tensordot(reader.weight.detach().float(), u, dims=([reader.residual_axis], [0]))
            assert seen.abs().max() < 1e-5 * reader.weight.detach().float().abs().max(), reader.name
        for writer in find_writers(model):
            assert torch.equal(writer.weight, writers[writer.name]), writer.name


def test_a_read_edit_changes_the_output_and_restores_bit_for_bit(model):
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        before = model(input_ids=ids).logits
        baker = Baker.for_model(model)
        r = torch.randn(model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(2))
        with baker.baked_into(Edit(r, READ_ONLY)):
            assert not torch.equal(model(input_ids=ids).logits, before)
        assert torch.equal(model(input_ids=ids).logits, before)
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


def test_a_baker_without_readers_refuses_a_read_edit():
    model = tiny_model("llama")[0]
    with pytest.raises(AblationError, match="attn-read, mlp-read.*Baker.for_model"):
        Baker(find_writers(model)).bake(Edit(torch.ones(model.config.hidden_size), READ_ONLY))


def test_an_unknown_child_of_an_attention_block_is_named_not_skipped():
    model = tiny_model("llama")[0]
    decoder_layers(model)[2].self_attn.extra_proj = torch.nn.Linear(model.config.hidden_size, 8)
    with pytest.raises(UnsupportedLayout, match=r"layers\.2\.self_attn\.extra_proj"):
        find_readers(model)


def test_the_read_intervention_weights_the_readers_by_its_own_kernel():
    from abliterate.ablation.resolve import resolve
    from abliterate.search.space import SearchSpace, candidate_from_params, distributions

    model = tiny_model("qwen3")[0]
    baker = Baker.for_model(model)
    space = SearchSpace(interventions=("read",))
    assert {"read_peak", "read_peak_weight", "read_falloff"} <= set(distributions(space))
    params = {"method": "mean", "scope": "global", "direction_index": 0.5, "first_layer": 0.0, "last_layer": 1.0,
              "norm_preserving": False, "intervention": "read", "read_peak": 1.0, "read_peak_weight": 0.5, "read_falloff": 0.34}
    for group in ("attn", "mlp"):
        params |= {f"{group}_shape": "tent", f"{group}_peak": 0.5, f"{group}_peak_weight": 1.0,
                   f"{group}_floor_fraction": 0.0, f"{group}_falloff": 0.5}
    candidate = candidate_from_params(params, LAYERS)
    payload = {"mean": torch.randn(LAYERS, model.config.hidden_size)}
    edit = resolve(candidate, payload, baker.writers)
    profile = edit.profile
    # peak at the last layer (3), falloff 0.34 x 3 = 1.02 layers: 0.5 there, about 0 one layer down, nothing further
    assert [profile.weight(MLP_READ, layer) for layer in range(LAYERS)][:2] == [0.0, 0.0]
    assert profile.weight(ATTN_READ, 3) == pytest.approx(0.5)
    assert {group: profile.kernels[group] for group in ("attn", "mlp")} == candidate.profile.kernels  # the writers' own, kept
