"""An exact rewrite of an int8 model that onnxruntime runs faster: zero channels up to a multiple of 16.

Why: onnxruntime's uint8 depthwise convolution (MLAS, measured on this AVX-512 VNNI Xeon, 1 thread)
is fast when the channel count is a multiple of 16 and slow otherwise, by more than the extra
channels cost: at 160x160, 24 channels took 1.05 ms and 32 took 0.49 ms; at 96x96 0.30 and 0.18 ms;
at 20x20, 232 channels 0.082 ms and 240 0.043 ms. The 1x1 convolutions around them also ran faster
at 32 input channels than at 24 (0.19 against 0.32 ms at 160x160). Channel counts come from the
variants' width multipliers and from pruning (multiples of 8), so a shipped student has such layers.

The rewrite works on the quantized graph, like the SpaceToDepth stem: every depthwise convolution
whose channel count C is not a multiple of 16 is widened, together with every tensor its channels
are tied to (the convolution that produces them, the residual Adds and the other depthwise
convolutions of the same stream, quantize/dequantize pairs, resizes), to the next multiple. The new
channels are zero: their producers get all-zero int8 weights and a zero int32 bias, the 1x1
convolutions that read them get zero weights for them, so they stay 0 (the zero point) through
every layer and add nothing to any sum. A Concat that reads a widened tensor gets its first C
channels back through a Slice of the uint8 tensor, so the decoder keeps its own channel counts.
Every output value is the same integer sum as before, and the graph as written (float convolutions
between quantize steps) gives the same alpha to the bit. onnxruntime's fused uint8 kernels scale a
sum back to uint8 in float, in an order that differs between widths: a value within float rounding
of .5 may round the other way (one of 614,400 at edgecut-duo's stem on a sample photo, where the new
width agreed with the graph and the old one did not). The accuracy bench gave the six shipped models
the same figures to the last stored digit.

A stream that cannot be widened safely (one fed by the graph input, read by an op not listed here,
or leaving the graph) is left as it is.
"""
from __future__ import annotations

import numpy as np

from .space_to_depth import _attrs, _set

MULTIPLE = 16

# ops that act on each channel apart, data input first: a widened input means a widened output
_PER_CHANNEL = {"QuantizeLinear", "DequantizeLinear", "Relu", "Clip", "Resize", "MaxPool", "AveragePool",
                "Gather", "Transpose"}
_ELEMENTWISE = {"Add", "Mul", "Sub", "Max", "Min"}


def _keeps_channels(node) -> bool:
    """Whether a _PER_CHANNEL op maps channel c of its input to channel c of its output: not a Gather
    along the channels, a Transpose that moves them, or a Resize given explicit sizes (they name C)."""
    a = _attrs(node)
    return not ((node.op_type == "Gather" and a.get("axis", 0) in (1, -3))
                or (node.op_type == "Transpose" and list(a.get("perm", []))[:2] != [0, 1])
                or (node.op_type == "Resize" and len(node.input) > 3 and node.input[3]))


class _Graph:
    """What the rewrite needs to look up in a graph: producers, consumers, initializers, weights."""

    def __init__(self, model):
        from .export import graph_index

        self.g = model.graph
        self.producers, self.consumers = graph_index(self.g)
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}
        self.uses: dict = {}
        for n in self.g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def constant(self, conv, index: int) -> tuple:
        """(initializer behind a conv's weight (index 1) or bias (2), its DequantizeLinear or None), or
        (None, None) when that input is absent or not a constant."""
        name = conv.input[index] if len(conv.input) > index else ""
        if not name:
            return None, None
        if name in self.inits:
            return name, None
        dq = self.producers.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.inits:
            return dq.input[0], dq
        return None, None

    def shape(self, conv) -> tuple:
        name, _ = self.constant(conv, 1)
        return tuple(self.inits[name].dims) if name else ()

    def depthwise(self, conv) -> bool:
        s = self.shape(conv)
        return len(s) == 4 and s[1] == 1 and _attrs(conv).get("group", 1) == s[0] > 1

    def is_initializer(self, name: str) -> bool:
        return name in self.inits

    def pad(self, node, index: int, axis: int, count: int, value=0) -> None:
        """Append `count` entries of `value` along `axis` to the initializer the node reads at `index`
        (a private copy when other nodes read it too); value "edge" repeats the last entry."""
        from onnx import numpy_helper

        name = node.input[index]
        a = self.array(name)
        if self.uses.get(name, 0) > 1:   # shared with another node: give this one its own
            self.uses[name] -= 1
            name = f"{name}_padded{len(self.inits)}"
            node.input[index] = name
            self.uses[name] = 1
            t = self.g.initializer.add()
            self.inits[name] = t
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, count)
        padded = np.pad(a, widths, mode="edge") if value == "edge" else np.pad(a, widths, constant_values=value)
        self.inits[name].CopyFrom(numpy_helper.from_array(padded, name))


def _stream(G: _Graph, seed: str, channels: int):
    """The tensors tied channel for channel to `seed`, and the convolutions and Concats at its edge:
    (producers, depthwise convs, consumers, [(concat, input index)]), or None if it cannot be widened."""
    tensors, todo = set(), [seed]
    producers, depthwise, consumers, concats = set(), set(), set(), []
    nodes = {}

    def key(n):
        nodes[n.output[0]] = n
        return n.output[0]

    while todo:
        t = todo.pop()
        if t in tensors:
            continue
        tensors.add(t)
        if t in G.outputs:
            return None
        p = G.producers.get(t)
        if p is None:                    # the graph input (or an initializer): not ours to widen
            return None
        if p.op_type == "Conv":
            if G.depthwise(p):
                depthwise.add(key(p))
                todo.append(p.input[0])
            elif G.shape(p)[:1] == (channels,):
                producers.add(key(p))
            else:
                return None
        elif p.op_type in _PER_CHANNEL:
            if not _keeps_channels(p):
                return None
            todo.append(p.input[0])
        elif p.op_type in _ELEMENTWISE:
            for i in p.input:
                if G.is_initializer(i):
                    if G.array(i).size != 1:
                        return None
                else:
                    todo.append(i)
        else:
            return None
        for c in G.consumers.get(t, []):
            if c.op_type == "Conv" and c.input[0] == t:
                if G.depthwise(c):
                    depthwise.add(key(c))
                    todo.append(c.output[0])
                elif _attrs(c).get("group", 1) == 1 and G.shape(c)[1:2] == (channels,):
                    consumers.add(key(c))
                else:
                    return None
            elif c.op_type in _PER_CHANNEL and c.input[0] == t:
                if not _keeps_channels(c):
                    return None
                todo.append(c.output[0])
            elif c.op_type in _ELEMENTWISE:
                if any(G.is_initializer(i) and G.array(i).size != 1 for i in c.input):
                    return None
                todo += [i for i in c.input if i != t and not G.is_initializer(i)] + [c.output[0]]
            elif c.op_type == "Concat" and _attrs(c).get("axis") in (1, -3):
                concats.append((key(c), list(c.input).index(t)))
            else:
                return None
    if any(G.shape(nodes[k])[0] != channels for k in depthwise):
        return None
    quantizers = [G.producers[t] for t in tensors if G.producers[t].op_type in ("QuantizeLinear", "DequantizeLinear")]
    if any(G.is_initializer(i) and G.array(i).size != 1 for q in quantizers for i in q.input[1:]):
        return None                      # per-channel quantized activations: not handled
    get = lambda ks: [nodes[k] for k in ks]
    return get(producers), get(depthwise), get(consumers), [(nodes[k], i) for k, i in concats]


def _widen_outputs(G: _Graph, conv, count: int) -> None:
    """Append `count` all-zero output channels to a conv: weight rows and the bias, each with its
    per-channel scale and zero point repeated from the last channel (onnxruntime fuses a Conv into
    uint8 only when every bias scale is input scale x weight scale, so the pairs must stay matched)."""
    for index in (1, 2):                 # weight, bias
        name, dq = G.constant(conv, index)
        if name is None:
            continue
        if dq is None:
            G.pad(conv, index, 0, count)
            continue
        G.pad(dq, 0, 0, count)
        for i in (1, 2):
            if len(dq.input) > i and dq.input[i] and G.array(dq.input[i]).size > 1:
                G.pad(dq, i, 0, count, "edge")


def _widen_inputs(G: _Graph, conv, count: int) -> None:
    _, dq = G.constant(conv, 1)
    if dq is None:
        G.pad(conv, 1, 1, count)
    else:
        G.pad(dq, 0, 1, count)


def _slice_back(G: _Graph, concat, index: int, channels: int) -> None:
    """Give a Concat the first `channels` channels of a widened input: sliced before its
    DequantizeLinear (a copy of it), so that onnxruntime still fuses the Concat into uint8."""
    from onnx import helper, numpy_helper

    t = concat.input[index]
    tag = f"{t}_first{channels}_{len(G.inits)}"
    for suffix, value in (("starts", 0), ("ends", channels), ("axes", 1)):
        name = f"{tag}_{suffix}"
        G.g.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
        G.inits[name] = G.g.initializer[-1]
    dq = G.producers.get(t)
    quantized = dq is not None and dq.op_type == "DequantizeLinear"
    at = list(G.g.node).index(concat)
    if quantized:
        G.g.node.insert(at, helper.make_node("DequantizeLinear", [f"{tag}_q", *dq.input[1:]], [tag]))
    G.g.node.insert(at, helper.make_node("Slice", [dq.input[0] if quantized else t, f"{tag}_starts", f"{tag}_ends",
                                                   f"{tag}_axes"], [f"{tag}_q" if quantized else tag]))
    concat.input[index] = tag


def pad_channels(src, dst=None, multiple: int = MULTIPLE) -> dict:
    """Widen the depthwise streams of an ONNX model (QDQ int8 or float) to multiples of `multiple`
    channels, in place or into `dst`. Returns {Conv node index in graph order: [out channels,
    in channels per group] before} for every convolution it changed ({} and nothing written when
    none), which `compress recover` needs to read the weights back."""
    import onnx

    model = onnx.load(str(src))
    G = _Graph(model)
    convs = [n for n in G.g.node if n.op_type == "Conv"]
    before = {i: list(G.shape(c)[:2]) for i, c in enumerate(convs)}
    done: set = set()   # nodes by their first output's name, unique in a graph
    plans = []
    for conv in convs:
        if conv.output[0] in done or not G.depthwise(conv) or G.shape(conv)[0] % multiple == 0:
            continue
        c = G.shape(conv)[0]
        found = _stream(G, conv.input[0], c)
        if found is None:
            done.add(conv.output[0])
            continue
        producers, depthwise, consumers, concats = found
        done.update(n.output[0] for n in depthwise)
        plans.append((c, -c % multiple, producers, depthwise, consumers, concats))
    changed = set()
    for c, count, producers, depthwise, consumers, concats in plans:
        for conv in producers + depthwise:
            _widen_outputs(G, conv, count)
        for conv in depthwise:
            _set(conv, group=c + count)
        for conv in consumers:
            _widen_inputs(G, conv, count)
        for concat, index in concats:
            _slice_back(G, concat, index, c)
        changed.update(n.output[0] for n in producers + depthwise + consumers)
    if not changed:
        return {}
    del G.g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst or src))
    return {i: before[i] for i, conv in enumerate(convs) if conv.output[0] in changed}


def unpad(convs: list, padding: dict) -> list:
    """[(weight, bias)] in graph order with the channels `pad_channels` added cut off again."""
    out = list(convs)
    for i, (o, ipg) in ((int(k), v) for k, v in padding.items()):
        w, b = out[i]
        out[i] = (w[:o, :ipg], None if b is None else b[:o])
    return out
