"""ablation.sae: per-layer SAEs are read from the common layout and their harmful features found."""

import pytest
import torch
from safetensors.torch import save_file

from abliterate.ablation.errors import AblationError
from abliterate.ablation.sae import load_saes, sae_directions

HIDDEN, FEATURES, LAYERS = 16, 12, 3


def write_sae(path, W_enc, b_enc=None, W_dec=None, b_dec=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": W_enc, "b_enc": torch.zeros(W_enc.shape[1]) if b_enc is None else b_enc,
               "W_dec": W_enc.T.contiguous() if W_dec is None else W_dec, "b_dec": torch.zeros(W_enc.shape[0]) if b_dec is None else b_dec}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def test_the_features_that_rise_on_harmful_prompts_give_the_directions(tmp_path):
    g = torch.Generator().manual_seed(0)
    decoder = torch.linalg.qr(torch.randn(HIDDEN, FEATURES, generator=g))[0].T.contiguous()  # orthonormal feature rows
    # Features 7 and 2 fire on harmful residuals (7 more), the rest on both alike.
    harmless = torch.randn(30, LAYERS, HIDDEN, generator=g) * 0.1
    harmful = harmless.clone() + 3.0 * decoder[7] + 1.5 * decoder[2]
    write_sae(tmp_path / "sae" / "blocks.1" / "sae_weights.safetensors", decoder.T.contiguous())
    write_sae(tmp_path / "sae" / "layer_2.safetensors", decoder.T.contiguous())
    (tmp_path / "sae" / "notes.safetensors").write_bytes(b"not a layer: ignored")
    saes = load_saes(tmp_path / "sae", HIDDEN)
    assert sorted(saes) == [1, 2]
    bases = sae_directions(saes, harmful, harmless, m=2)
    assert bases.shape == (LAYERS, 2, HIDDEN) and torch.equal(bases[0], torch.zeros(2, HIDDEN))  # no SAE at layer 0
    for layer in (1, 2):
        assert torch.allclose(bases[layer, 0], decoder[7], atol=1e-5)  # the strongest first
        span = bases[layer].T @ bases[layer]
        assert torch.allclose(span @ decoder[2], decoder[2], atol=1e-5)  # the second feature is in the span
        assert torch.allclose(bases[layer] @ bases[layer].T, torch.eye(2), atol=1e-5)


def test_bad_sae_folders_are_one_line(tmp_path):
    with pytest.raises(AblationError, match="does not exist"):
        load_saes(tmp_path / "missing", HIDDEN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AblationError, match="no SAE files"):
        load_saes(tmp_path / "empty", HIDDEN)
    (tmp_path / "partial").mkdir()
    save_file({"W_enc": torch.zeros(HIDDEN, 4)}, str(tmp_path / "partial" / "layer_0.safetensors"))
    with pytest.raises(AblationError, match="lacks b_enc, W_dec, b_dec"):
        load_saes(tmp_path / "partial", HIDDEN)
    write_sae(tmp_path / "wide" / "layer_0.safetensors", torch.zeros(HIDDEN + 1, 4))
    with pytest.raises(AblationError, match="does not fit a model of hidden size 16"):
        load_saes(tmp_path / "wide", HIDDEN)
    write_sae(tmp_path / "deep" / "layer_9.safetensors", torch.zeros(HIDDEN, 4))
    with pytest.raises(AblationError, match=r"layer\(s\) \[9\], but the model has layers 0..2"):
        sae_directions(load_saes(tmp_path / "deep", HIDDEN), torch.zeros(2, LAYERS, HIDDEN), torch.zeros(2, LAYERS, HIDDEN), 1)
