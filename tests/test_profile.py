import math

import pytest

from abliterate.ablation.errors import AblationError
from abliterate.ablation.profile import Kernel, Profile


def test_tent_values():
    k = Kernel("tent", peak=4, peak_weight=1.2, floor_weight=0.2, falloff=2)
    assert [k.weight(layer) for layer in range(8)] == pytest.approx([0, 0, 0.2, 0.7, 1.2, 0.7, 0.2, 0])


def test_fractional_peak():
    k = Kernel("tent", peak=2.5, peak_weight=1.0, floor_weight=0.0, falloff=1)
    assert k.weight(2) == pytest.approx(0.5) and k.weight(3) == pytest.approx(0.5)
    assert k.weight(1) == 0.0


def test_gaussian_hits_peak_and_floor_and_is_a_bell():
    k = Kernel("gaussian", peak=5, peak_weight=1.0, floor_weight=0.25, falloff=4)
    assert k.weight(5) == pytest.approx(1.0)
    assert k.weight(9) == pytest.approx(0.25) and k.weight(1) == pytest.approx(0.25)
    assert k.weight(10) == 0.0
    t = 0.5  # half-way: exp(-2 t^2) rescaled between the ends
    expected = 1.0 + (0.25 - 1.0) * (1 - math.exp(-2 * t * t)) / (1 - math.exp(-2))
    assert k.weight(7) == pytest.approx(expected)
    assert k.weight(7) > Kernel("tent", 5, 1.0, 0.25, 4).weight(7)  # flatter top than the tent


def test_profile_range_and_groups():
    p = Profile({"attn": Kernel("tent", 2, 1.0, 1.0, 10)}, first_layer=1, last_layer=3)
    assert [p.weight("attn", i) for i in range(5)] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert p.weight("mlp", 2) == 0.0
    assert Profile.uniform(0.5).weight("mlp", 100) == 0.5


@pytest.mark.parametrize("kwargs", [dict(shape="box"), dict(falloff=0)])
def test_bad_kernel(kwargs):
    with pytest.raises(AblationError):
        Kernel(**kwargs)
