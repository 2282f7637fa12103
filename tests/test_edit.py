import pytest
import torch

from abliterate.ablation.edit import ablate, post_norm_direction, unit


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_hand_computed_example():
    # W = [[1, 2], [3, 4]] writes column vectors into a 2-D residual; remove e1 fully.
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = ablate(w, torch.tensor([2.0, 0.0]), weight=1.0, residual_axis=0)
    assert torch.equal(out, torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    half = ablate(w, torch.tensor([1.0, 0.0]), weight=0.5, residual_axis=0)
    assert torch.equal(half, torch.tensor([[0.5, 1.0], [3.0, 4.0]]))


def test_full_weight_leaves_nothing_along_direction(gen):
    w = torch.randn(16, 24, generator=gen)
    r = torch.randn(16, generator=gen)
    out = ablate(w, r, 1.0, residual_axis=0)
    assert (unit(r) @ out).abs().max() < 1e-5
    assert (unit(r) @ w).abs().max() > 0.1  # the check above could fail


def test_matches_matrix_formula_both_layouts(gen):
    w = torch.randn(16, 24, generator=gen)
    r = unit(torch.randn(16, generator=gen))
    expected = w - 0.7 * torch.outer(r, r) @ w
    assert torch.allclose(ablate(w, r, 0.7, residual_axis=0), expected, atol=1e-6)
    # [in, H] layout: W <- W - w W r r^T
    assert torch.allclose(ablate(w.T, r, 0.7, residual_axis=1), expected.T, atol=1e-6)


def test_fused_experts_axis(gen):
    experts = torch.randn(3, 16, 8, generator=gen)  # [E, H, I]
    r = torch.randn(16, generator=gen)
    out = ablate(experts, r, 1.0, residual_axis=1)
    for e in range(3):
        assert torch.allclose(out[e], ablate(experts[e], r, 1.0, residual_axis=0))
    assert torch.einsum("h,ehi->ei", unit(r), out).abs().max() < 1e-5


def test_norm_preserving_keeps_lengths_and_orthogonality(gen):
    w = torch.randn(16, 24, generator=gen)
    r = torch.randn(16, generator=gen)
    out = ablate(w, r, 1.0, residual_axis=0, norm_preserving=True)
    assert torch.allclose(out.norm(dim=0), w.norm(dim=0), atol=1e-5)
    assert (unit(r) @ out).abs().max() < 1e-5
    plain = ablate(w, r, 1.0, residual_axis=0)
    assert not torch.allclose(plain.norm(dim=0), w.norm(dim=0), atol=1e-3)


def test_keeps_dtype_and_zero_weight_is_identity(gen):
    w = torch.randn(8, 8, generator=gen).to(torch.bfloat16)
    out = ablate(w, torch.randn(8, generator=gen), 0.0)
    assert out.dtype == torch.bfloat16 and torch.equal(out, w)


def test_post_norm_direction_cancels_through_the_norm(gen):
    # y -> scale * y / rms(y): editing W against unit(scale * r) removes r from the norm output.
    scale = 1.0 + torch.rand(16, generator=gen)
    r = unit(torch.randn(16, generator=gen))
    w = torch.randn(16, 24, generator=gen)
    x = torch.randn(5, 24, generator=gen)

    def normed(weight):
        y = x @ weight.T
        return scale * y / y.pow(2).mean(-1, keepdim=True).sqrt()

    corrected = ablate(w, post_norm_direction(r, scale), 1.0)
    assert (normed(corrected) @ r).abs().max() < 1e-4
    naive = ablate(w, r, 1.0)
    assert (normed(naive) @ r).abs().max() > 1e-2


def test_subspace_ablation_at_full_weight_writes_nothing_in_the_span(gen):
    from abliterate.ablation.cone import orthonormal_basis
    from abliterate.ablation.edit import ablate_subspace

    w = torch.randn(16, 24, generator=gen)
    q = orthonormal_basis(torch.randn(3, 16, generator=gen))
    assert (q @ w).abs().max() > 0.1  # the check below could fail
    for axis, tensor in ((0, w), (1, w.T)):
        out = ablate_subspace(tensor, q, 1.0, residual_axis=axis)
        assert (q @ out.movedim(axis, 0)).abs().max() < 1e-5
    # The formula, at a partial weight; the part outside the span is untouched.
    expected = w - 0.4 * q.T @ q @ w
    out = ablate_subspace(w, q, 0.4)
    assert torch.allclose(out, expected, atol=1e-6)
    rest = torch.eye(16) - q.T @ q
    assert torch.allclose(rest @ out, rest @ w, atol=1e-5)
    kept = ablate_subspace(w, q, 1.0, norm_preserving=True)
    assert torch.allclose(kept.norm(dim=0), w.norm(dim=0), atol=1e-5) and (q @ kept).abs().max() < 1e-5
    # One direction as a subspace of one is the single-direction rule.
    assert torch.allclose(ablate_subspace(w, q[:1], 0.7), ablate(w, q[0], 0.7), atol=1e-6)


def test_amplify_scales_only_the_c_component(gen):
    from abliterate.ablation.edit import amplify

    w = torch.randn(16, 24, generator=gen)
    c = unit(torch.randn(16, generator=gen))
    out = amplify(w, c, 0.3)
    assert torch.allclose(c @ out, 1.3 * (c @ w), atol=1e-5)
    rest = torch.eye(16) - torch.outer(c, c)
    assert torch.allclose(rest @ out, rest @ w, atol=1e-5)
    assert torch.allclose(amplify(w.T, c, 0.3, residual_axis=1), out.T, atol=1e-6)
    assert torch.equal(amplify(w, c, 0.0), w)


def test_amplify_through_a_post_norm_scales_what_the_norm_passes_on(gen):
    from abliterate.ablation.edit import amplify

    scale = 1.0 + torch.rand(16, generator=gen)
    c = unit(torch.randn(16, generator=gen))
    w = torch.randn(16, 24, generator=gen)
    x = torch.randn(5, 24, generator=gen)

    def along_c(weight):  # the norm's output along c, before the rms (one factor for every component)
        return (scale * (x @ weight.T)) @ c

    corrected = amplify(w, post_norm_direction(c, scale), 0.3)
    assert torch.allclose(along_c(corrected), 1.3 * along_c(w), atol=1e-4)
    naive = amplify(w, c, 0.3)
    assert not torch.allclose(along_c(naive), 1.3 * along_c(w), atol=1e-2)
