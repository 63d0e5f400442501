"""Time onnxruntime's int8 depthwise 3x3 convolution by channel count, on this machine.

Why: pruning rounds channel counts (`edgecut compress prune --round-to`), and on x86 onnxruntime's
int8 depthwise kernel is fast only at some counts (measured on the 2-core dev Xeon, 112x112, 1 thread:
24 channels 0.37 ms, 32 channels 0.22 ms). Run this before choosing --round-to for your hardware.
Each figure is a chain of N QLinearConv layers minus a chain of one, divided by N-1, so quantize and
dequantize of the float input and output cancel out.

    python scripts/depthwise_bench.py --size 112 --channels 8,16,24,32,40,48,64
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def chain(channels: int, size: int, layers: int, seed: int = 0) -> bytes:
    """Quantize -> `layers` int8 depthwise 3x3 convs (u8 activations, s8 weights) -> dequantize."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
             numpy_helper.from_array(np.zeros(c, np.int32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q0"])]
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.integers(-100, 100, (c, 1, 3, 3)).astype(np.int8), f"w{i}"))
        nodes.append(helper.make_node("QLinearConv", [f"q{i}", "xs", "xz", f"w{i}", "ws", "wz", "xs", "xz", "b"],
                                      [f"q{i + 1}"], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("DequantizeLinear", [f"q{layers}", "xs", "xz"], ["y"]))
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def p50_ms(model: bytes, channels: int, size: int, threads: int, runs: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, channels, size, size), dtype=np.float32)
    for _ in range(max(5, runs // 5)):
        sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=112, help="feature map side (112: a 224 px model's first stage)")
    ap.add_argument("--channels", default="8,16,24,32,40,48,64")
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args(argv)
    print(f"int8 depthwise 3x3 at {args.size}x{args.size}, {args.threads} thread(s), onnxruntime {ort.__version__}")
    print(f"{'channels':>8}  {'ms/layer':>8}  {'ns/(channel*pixel)':>18}")
    for c in (int(v) for v in args.channels.split(",")):
        one = p50_ms(chain(c, args.size, 1), c, args.size, args.threads, args.runs)
        many = p50_ms(chain(c, args.size, args.layers), c, args.size, args.threads, args.runs)
        per = (many - one) / (args.layers - 1)
        print(f"{c:>8}  {per:8.3f}  {per * 1e6 / (c * args.size ** 2):18.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
