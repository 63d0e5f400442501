"""int8 that gives the same alpha on x86 and ARM: which ops to keep exact, and how.

A QDQ model runs as integer kernels after onnxruntime fuses DequantizeLinear -> op ->
QuantizeLinear. Most of those kernels are exact (int32 accumulation, one float multiply, round
to nearest even on both instruction sets), so x86 and aarch64 agree to the bit. Two are not:
  - Resize on uint8 interpolates with arch-specific code: bilinear 2x upsampling lands on
    x.5 steps all the time, and the two kernels break those ties differently;
  - QLinearAdd rescales both inputs to the output scale, in float on x86 and in fixed point on
    ARM (MlasCalcQLinearAddParameters), so a sum that falls near a rounding edge goes one
    way on one machine and the other way on the other.
One flipped step early in the encoder spreads (expanded 1x1 convs fan it out to hundreds of
values two blocks later) and ends as a visibly different edge. Measured on the default student
over 36 photos, emulated Cortex-A72 vs this Xeon: mean 1.65/255, max 166/255 per pixel.

The fix, at no cost in speed: Resize stays in float (excluded from quantization), and every
tensor that meets at a residual Add (both inputs and the output, chained through a stage) gets
one shared scale, each keeping its own zero point. With equal scales the rescale factor is exactly
1, both kernels add integers, and nothing is rounded. The shared scale is the widest member's
range / 255, so the narrower residual branches lose some resolution (measured: alpha error vs
fp32 3.0 -> 3.4 of 255 mean); the x86-ARM difference becomes 0.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

QMAX = 255   # uint8 activations


def resize_nodes(model_path) -> list:
    """Names of the Resize nodes: quantize_static's nodes_to_exclude keeps them in float."""
    import onnx

    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type == "Resize"]


# Ops that onnxruntime's quantizer gives their input's scale (it quantizes their output "same as input"):
# an Add operand that comes through them has the scale of the tensor they read, not its own.
_SAME_SCALE_OPS = ("Gather", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice")


def residual_groups(model_path) -> list:
    """Tensors that must share one scale: each Add's inputs and output, merged along a chain of
    residual blocks (x1 = x0 + f(x0), x2 = x1 + f(x1) puts x0, f(x0), x1, f(x1), x2 together), and
    with each operand the tensors it was copied from by index ops (an ensemble's gathers of a
    member's logits onto the other's grid: without them the Add met the member's own scale)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    constants = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    parent: dict = {}

    def root(t: str) -> str:
        while parent.setdefault(t, t) != t:
            t = parent[t]
        return t

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    for node in graph.node:
        if node.op_type == "Add":
            for t in [*node.input, node.output[0]]:
                join(t, node.output[0])
                src = producer.get(t)
                while src is not None and src.op_type in _SAME_SCALE_OPS and src.input[0] not in constants:
                    join(src.input[0], node.output[0])
                    src = producer.get(src.input[0])
    groups: dict = {}
    for t in list(parent):
        groups.setdefault(root(t), []).append(t)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def shared_scales(groups, ranges: dict) -> dict:
    """TensorQuantOverrides for quantize_static: per group one scale (the widest member's range,
    0 included, over 255), per tensor its own zero point (so a ReLU output keeps zero point 0
    and its ReLU can still be folded into the clamp)."""
    overrides = {}
    for group in groups:
        spans = {t: (min(float(ranges[t][0]), 0.0), max(float(ranges[t][1]), 0.0)) for t in group if t in ranges}
        if len(spans) < len(group):   # a constant operand (no calibration range): leave the group alone
            continue
        scale = max(hi - lo for lo, hi in spans.values()) / QMAX or 1.0
        for t, (lo, _) in spans.items():
            zero = int(np.clip(round(-lo / scale), 0, QMAX))
            overrides[t] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zero, dtype=np.uint8)}]
    return overrides


def calibrated_ranges(model_path, reader, method) -> dict:
    """{tensor: (min, max)} as quantize_static's own calibration finds them (same calibrator)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(str(model_path), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method)
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    return {name: tuple(np.asarray(data[name].range_value, dtype=np.float64).ravel()[:2]) for name in data}
