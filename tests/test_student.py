"""The student family: registry, shapes, sizes, and int8-friendly operators."""
import pytest

torch = pytest.importorskip("torch")

from edgecut.models.student import count_macs, count_params, create_student  # noqa: E402
from edgecut.models.variants import get_variant, list_variants  # noqa: E402


def test_registry_names_and_unknown():
    assert {"edgecut-nano", "edgecut-small", "edgecut-medium"} <= set(list_variants())
    with pytest.raises(KeyError, match="unknown student variant"):
        get_variant("nope")


@pytest.mark.parametrize("name,lo,hi", [("edgecut-nano", 0.1e6, 0.4e6), ("edgecut-small", 0.4e6, 1.0e6),
                                        ("edgecut-medium", 0.9e6, 2.1e6)])
def test_parameter_budget(name, lo, hi):
    assert lo <= count_params(create_student(name)) <= hi


def test_output_is_alpha_at_input_resolution():
    m = create_student("edgecut-nano").eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 96, 128))
    assert y.shape == (2, 1, 96, 128)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_only_relu_and_no_squeeze_excite():
    """Hard-swish, SiLU and SE gating stay in float under int8: the family must not use them."""
    m = create_student("edgecut-small")
    kinds = {type(mod).__name__ for mod in m.modules()}
    assert "ReLU" in kinds
    assert not kinds & {"Hardswish", "SiLU", "GELU", "Hardsigmoid", "AdaptiveAvgPool2d"}
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.groups == 1 and mod.out_channels > 1:
            assert mod.out_channels % 4 == 0  # depthwise convs over the concatenated RGB input are exempt


def test_macs_scale_with_resolution():
    m = create_student("edgecut-nano")
    assert count_macs(m, 256) == pytest.approx(4 * count_macs(m, 128), rel=0.01)
