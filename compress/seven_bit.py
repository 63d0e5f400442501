"""7-bit weights where onnxruntime's x86 int8 kernels can overflow, so every CPU gives the same alpha.

Why: onnxruntime runs a uint8 x int8 convolution (every Conv but the depthwise ones) as a GEMM. On
x86 with AVX-512 VNNI or AVX-VNNI it multiplies and adds in int32 (vpdpbusd), exactly. On x86 with
AVX2 alone (most laptops before 2020, AMD before Zen 4, and this project's 2-core EPYC machine on
2026-12-02) it uses vpmaddubsw, which adds each pair of adjacent u8 x s8 products into a *saturating
int16*: 255 x 127 x 2 = 64,770 does not fit in 32,767. Measured on that AVX2 machine with the shipped
default (sha 2a3d8cf9): portrait_eg IoU 0.9436 against 0.9481 for the same file on a VNNI machine and
in an exact float simulation of its QDQ graph; a 1x1 conv of 64 channels of 255 x 127 gave 41.0
instead of 81.3. ARM (sdot/udot or widening multiplies) and the depthwise kernels accumulate in
int32 and are exact everywhere.

The fix, onnxruntime's own advice for U8S8 on non-VNNI x86 ("reduce_range"): weights of at most
64 in magnitude, 255 x 64 x 2 = 32,640, so no pair can saturate. Each output channel of a
non-depthwise Conv whose int8 weights reach past 64 is re-rounded to half the steps (q -> round(q/2),
its scale doubled) and its int32 bias likewise (bias scale = input scale x weight scale). The
depthwise convs keep 8 bits. Cost in accuracy: measured on the shipped default, portrait_eg 0.9481
(8-bit, exact) -> 0.9483 (7-bit): within noise. Speed: same kernels, same time.

The rewrite is idempotent (a channel within +-64 is left alone) and works on compact files whose
initializers are shared between nodes (a shared one is copied before it is changed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

QMAX_W7 = 64    # |w| <= 64: 255 * 64 * 2 = 32,640 <= 32,767 (int16), the vpmaddubsw pair sum


def is_depthwise(group: int, weight_shape) -> bool:
    """A Conv onnxruntime runs with its exact depthwise kernel: one input channel per group."""
    return group > 1 and group == weight_shape[0] and weight_shape[1] == 1


def gemm_convs(graph) -> list:
    """(conv, weight DequantizeLinear, bias DequantizeLinear or None) for every quantized Conv that
    onnxruntime runs as a u8s8 GEMM (all but the depthwise ones)."""
    from onnx import numpy_helper

    from .export import graph_index

    inits = {i.name: i for i in graph.initializer}
    producers, _ = graph_index(graph)
    out = []
    for n in graph.node:
        if n.op_type != "Conv":
            continue
        wdq = producers.get(n.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue                                        # a float conv: not an int8 kernel
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if is_depthwise(group, numpy_helper.to_array(inits[wdq.input[0]]).shape):
            continue
        bdq = producers.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        out.append((n, wdq, bdq if bdq is not None and bdq.op_type == "DequantizeLinear" else None))
    return out


def seven_bit_weights(path) -> int:
    """Rewrite an int8 QDQ ONNX file in place so no u8s8 GEMM weight exceeds +-64 (see the module
    docstring); returns how many convolutions changed (0: the file is left untouched)."""
    import onnx
    from onnx import numpy_helper

    from .export import graph_index

    path = Path(path)
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses = {name: len(readers) for name, readers in graph_index(g)[1].items()}

    def writable(node, k: int) -> str:
        """The name of node.input[k]'s initializer, copied first if another node reads it too."""
        name = node.input[k]
        if uses.get(name, 0) > 1:
            new = f"{name}_7bit_{node.name or node.output[0]}"
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
            inits[new] = g.initializer[-1]                  # append copies: keep the graph's own
            uses[name] -= 1
            uses[new] = 1
            node.input[k] = new
            name = new
        return name

    def put(name: str, arr: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    changed = 0
    for conv, wdq, bdq in gemm_convs(g):
        w = numpy_helper.to_array(inits[wdq.input[0]])
        over = np.abs(w.reshape(w.shape[0], -1).astype(np.int32)).max(1) > QMAX_W7     # per output channel
        if not over.any():
            continue
        w_scale = numpy_helper.to_array(inits[wdq.input[1]])
        if w_scale.size == 1:                               # per-tensor weights: the whole tensor halves
            over[:] = True
        halve = over.reshape(-1, *([1] * (w.ndim - 1)))
        w7 = np.where(halve, np.clip(np.round(w.astype(np.float32) / 2), -QMAX_W7, QMAX_W7), w).astype(w.dtype)

        def doubled(scale: np.ndarray) -> np.ndarray:
            if scale.size == 1:
                if not over.all():
                    raise ValueError(f"{path}: {conv.name}: a per-tensor scale beside per-channel weights")
                return scale * 2
            return scale * np.where(over, 2, 1).astype(scale.dtype)

        put(writable(wdq, 0), w7)
        put(writable(wdq, 1), doubled(w_scale))
        if bdq is not None:
            b = numpy_helper.to_array(inits[bdq.input[0]])
            put(writable(bdq, 0), np.where(over, np.round(b.astype(np.float64) / 2), b).astype(b.dtype))
            put(writable(bdq, 1), doubled(numpy_helper.to_array(inits[bdq.input[1]])))
        changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


def max_gemm_weight(path) -> int:
    """The largest |int8 weight| of any u8s8 GEMM conv in an ONNX file (0 without one): at most 64
    means no AVX2 machine can saturate it."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    return max((int(np.abs(numpy_helper.to_array(inits[wdq.input[0]]).astype(np.int32)).max())
                for _, wdq, _ in gemm_convs(g)), default=0)
