"""7-bit GEMM weights (compress/seven_bit.py): onnxruntime's fused int8 kernels give the exact QDQ
arithmetic on every x86 CPU, AVX2 without VNNI included, and the rewrite changes nothing else.

On a VNNI or ARM machine the unrewritten convs are exact too, so these tests pass there before the
fix as well; on an AVX2-only machine (this project's on 2026-12-02) the equality checks failed
before it (a 64-channel 1x1 conv of 255 x 127: 41.0 against 81.3)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecut.compress.seven_bit import QMAX_W7, max_gemm_weight, seven_bit_weights  # noqa: E402


def _conv_model(path, cin, cout, k, group, seed=0, share_weights=False):
    """x -> Q/DQ (uint8) -> Conv(DQ(int8 W), DQ(int32 bias)) -> Q/DQ: the pattern onnxruntime fuses into
    its integer kernels. Weights of full int8 range and photos near 255 are the case that saturates.
    share_weights: a second conv reads the same weight, scale and bias initializers (as compact_onnx
    leaves them when two constants are equal)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (cout, cin // group, k, k)).astype(np.int8)
    w[:, 0] = 127                                     # per-channel symmetric: every channel reaches 127
    w_scale = rng.uniform(0.002, 0.004, cout).astype(np.float32)
    x_scale = np.float32(1 / 255)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    inits = [numpy_helper.from_array(np.array(x_scale), "xs"), numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(bias, "bq"), numpy_helper.from_array(x_scale * w_scale, "bs"),
             numpy_helper.from_array(np.zeros(cout, np.int32), "bz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"), numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    outs = []
    for i in range(2 if share_weights else 1):
        nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], [f"wd{i}"], name=f"wdq{i}", axis=0),
                  helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], [f"bd{i}"], name=f"bdq{i}", axis=0),
                  helper.make_node("Conv", ["xd", f"wd{i}", f"bd{i}"], [f"y{i}"], name=f"conv{i}", group=group,
                                   pads=[k // 2] * 4),
                  helper.make_node("QuantizeLinear", [f"y{i}", "ys", "yz"], [f"yq{i}"]),
                  helper.make_node("DequantizeLinear", [f"yq{i}", "ys", "yz"], [f"out{i}"])]
        outs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, cout, 8, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w, w_scale, bias


def _run(path, x, fused: bool):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)   # float convs between Q/DQ
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _bright(cin, seed=1):
    return np.random.default_rng(seed).uniform(0.9, 1.0, (1, cin, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("cin,cout,k,group", [(64, 16, 1, 1), (16, 16, 3, 1), (32, 32, 3, 4)],
                         ids=["1x1", "3x3", "grouped"])
def test_fused_kernels_give_the_exact_qdq_result(tmp_path, cin, cout, k, group):
    path = tmp_path / "m.onnx"
    _conv_model(path, cin, cout, k, group)
    assert seven_bit_weights(path) == 1 and max_gemm_weight(path) <= QMAX_W7
    x = _bright(cin)
    fused, exact = _run(path, x, True)[0], _run(path, x, False)[0]
    # the same integers: at most one output step apart where float rounding meets a .5
    assert np.abs(fused - exact).max() <= 0.05 + 1e-6 and np.mean(fused != exact) < 0.01


def test_rewrite_moves_weights_and_bias_by_at_most_one_old_step(tmp_path):
    path = tmp_path / "m.onnx"
    w, w_scale, bias = _conv_model(path, 32, 16, 3, 1)
    seven_bit_weights(path)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    before = w * w_scale[:, None, None, None]
    after = init["wq"].astype(np.float32) * init["ws"][:, None, None, None]
    assert np.all(np.abs(after - before) <= w_scale[:, None, None, None] * (1 + 1e-4))
    assert np.allclose(init["ws"], 2 * w_scale) and np.allclose(init["bs"], 2 * (w_scale / np.float32(255)))
    assert np.all(np.abs(init["bq"] * 2 - bias) <= 1)


def test_rewrite_is_idempotent_and_leaves_depthwise_alone(tmp_path):
    path = tmp_path / "m.onnx"
    _conv_model(path, 32, 16, 1, 1)
    assert seven_bit_weights(path) == 1
    once = path.read_bytes()
    assert seven_bit_weights(path) == 0 and path.read_bytes() == once
    dw = tmp_path / "dw.onnx"
    _conv_model(dw, 16, 16, 3, 16)       # depthwise: onnxruntime accumulates in int32, exact as it is
    untouched = dw.read_bytes()
    assert seven_bit_weights(dw) == 0 and dw.read_bytes() == untouched and max_gemm_weight(dw) == 0


def test_shared_initializers_are_halved_once_for_each_reader(tmp_path):
    path = tmp_path / "m.onnx"
    w, w_scale, _ = _conv_model(path, 32, 16, 1, 1, share_weights=True)
    assert seven_bit_weights(path) == 2
    g = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.name.startswith("wdq"):
            assert np.allclose(init[n.input[1]], 2 * w_scale)          # doubled once, not twice
            assert np.abs(init[n.input[0]]).max() <= QMAX_W7
    x = _bright(32)
    fused, exact = _run(path, x, True), _run(path, x, False)
    assert np.array_equal(fused[0], fused[1])
    assert all(np.abs(a - b).max() <= 0.05 + 1e-6 for a, b in zip(fused, exact))
