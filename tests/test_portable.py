"""Portable int8: residual Adds share one scale (exact integer adds), Resize stays in float, GEMM weights stay within 7 bits."""
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from edgecut.compress.export import float_ops  # noqa: E402
from edgecut.compress.portable import shared_scales  # noqa: E402
from edgecut.compress.seven_bit import QMAX_W7, max_gemm_weight  # noqa: E402
from edgecut.models import embedded_dir  # noqa: E402
from edgecut.runtime.manifest import Manifest  # noqa: E402
from edgecut.runtime.session import Session  # noqa: E402


def test_shared_scales_one_scale_own_zero_points():
    groups = [["relu_out", "branch", "sum"]]
    ranges = {"relu_out": (0.0, 12.0), "branch": (-3.0, 2.0), "sum": (-10.0, 20.0)}
    over = shared_scales(groups, ranges)
    scales = {float(v[0]["scale"]) for v in over.values()}
    assert len(scales) == 1 and scales.pop() == pytest.approx(30.0 / 255)
    assert int(over["relu_out"][0]["zero_point"]) == 0           # its ReLU can still fold into the clamp
    for t, (lo, hi) in ranges.items():                             # every member's range still fits
        s, z = float(over[t][0]["scale"]), int(over[t][0]["zero_point"])
        assert s * (0 - z) <= lo + 1e-6 and s * (255 - z) >= hi - 1e-6


def test_shared_scales_skips_a_group_with_an_uncalibrated_member():
    assert shared_scales([["a", "const"]], {"a": (0.0, 1.0)}) == {}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, make_student):
    pytest.importorskip("torch")
    from edgecut.compress.export import export_onnx, quantize_int8
    from edgecut.models.variants import StudentConfig, register

    tiny = register(StudentConfig(name="test-portable", input_size=64, width=0.25, context_channels=16,
                                  decoder_channels=(16, 8, 8, 8)))
    out = tmp_path_factory.mktemp("portable")
    fp32 = export_onnx(make_student(tiny), out, "tiny-fp32")
    rng = np.random.default_rng(0)
    photos = []
    for i in range(6):
        a = np.full((80, 100, 3), rng.integers(0, 255, 3), np.uint8)
        a[15:65, 20 + 4 * i:80] = rng.integers(0, 255, 3)
        photos.append(out / f"p{i}.png")
        Image.fromarray(a).save(photos[-1])
    plain = quantize_int8(fp32, out, "plain", photos, compact=False, portable=False)
    portable = quantize_int8(fp32, out, "portable", photos, compact=False)
    return fp32, plain, portable, photos


def _add_scales(model_path) -> list:
    """Per Add node: the scales of its two dequantized inputs and of its quantized output."""
    g = onnx.load(str(model_path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rows = []
    for n in g.node:
        if n.op_type != "Add":
            continue
        q = next(c for c in g.node if c.op_type == "QuantizeLinear" and c.input[0] == n.output[0])
        rows.append([float(init[producer[i].input[1]]) for i in n.input] + [float(init[q.input[1]])])
    return rows


def test_portable_adds_share_scales_and_resize_is_float(quantized):
    _, plain, portable, _ = quantized
    rows = _add_scales(portable / "model.onnx")
    assert rows and all(len(set(r)) == 1 for r in rows)
    assert any(len(set(r)) > 1 for r in _add_scales(plain / "model.onnx"))   # what plain calibration gives
    assert float_ops(portable / "model.onnx").get("Resize", 0) > 0
    assert "Resize" not in float_ops(plain / "model.onnx")


def test_portable_stays_close_to_float(quantized):
    fp32, _, portable, photos = quantized
    a, b = Session(fp32, threads=1), Session(portable, threads=1)
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        assert np.abs(a.infer(rgb) - b.infer(rgb)).mean() < 0.03


def _embedded_int8() -> list:
    folders = sorted(d for d in embedded_dir().iterdir() if (d / "manifest.json").is_file())
    manifests = [Manifest.load(d / "manifest.json") for d in folders]
    return [d for d, m in zip(folders, manifests) if m.precision == "int8" and m.format == "onnx"]


@pytest.mark.parametrize("folder", _embedded_int8(), ids=lambda d: d.name)
def test_shipped_int8_models_cannot_saturate_on_avx2(folder):
    """No u8s8 GEMM weight past +-64 (compress/seven_bit.py): x86 without VNNI then computes the same
    integers as VNNI and ARM. The files before 2026-12-02 held +-127 and lost 0.45 IoU points on
    portrait_eg on an AVX2 machine (default model)."""
    m = Manifest.load(folder / "manifest.json")
    assert max_gemm_weight(folder / m.file) <= QMAX_W7
    assert m.extra["quantization"]["portable"]["seven_bit_gemm_weights"] > 0


@pytest.mark.parametrize("folder", _embedded_int8(), ids=lambda d: d.name)
def test_shipped_int8_models_are_portable(folder):
    """`make arm-check` (root, qemu) cannot run in CI; this is the property it relies on."""
    path = folder / Manifest.load(folder / "manifest.json").file
    rows = _add_scales(path)
    assert all(len(set(r)) == 1 for r in rows), f"{folder.name}: a residual Add rescales (x86 and ARM may differ)"
    assert "Resize" not in {n.op_type for n in onnx.load(str(path)).graph.node} or float_ops(path).get("Resize")
