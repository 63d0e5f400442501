"""A trainable checkpoint back from a shipped int8 ONNX student.

Why: a clone of this repo holds the shipped models but none of the checkpoints they were trained
from (those stay out of git), so fine-tuning the default model on one's own photos, or on a second
teacher, would start from nothing. The int8 file still holds every weight: the convolutions are
read back in graph order (which is the student's module order), dequantized, and the export's
rewrites undone: the zero channels added for onnxruntime's kernels are cut off, the SpaceToDepth
stem goes back to a 3x3 stride-2 kernel, and the logit calibration folded into the head is divided
out (the manifest records both).

The export folded each BatchNorm into its convolution, so the recovered convolutions carry a bias
that the student's bias-free convs hold in their BatchNorm instead. A BatchNorm that trains
normalises by the batch's statistics, so an identity BatchNorm would change the network the moment
fine-tuning starts; each one is therefore set to undo the statistics its input has on real photos
(running mean/var measured, weight = std, bias = mean + folded bias): the same function in eval
mode, and about the same in train mode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.manifest import Manifest
from .pad_channels import unpad
from .space_to_depth import _TAP


def _dequantized(graph, init: dict) -> dict:
    """Output name -> float array of every DequantizeLinear of an initializer (weights, biases)."""
    out = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        q = init[node.input[0]].astype(np.float64)
        scale = init[node.input[1]].astype(np.float64)
        zp = init[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and q.ndim > 1:   # per-channel along `axis` (a bias is per-element)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        out[node.output[0]] = ((q - zp) * scale).astype(np.float32)
    return out


def unstem(w: np.ndarray) -> np.ndarray:
    """(O, 4C, 2, 2) SpaceToDepth stem kernel -> the (O, C, 3, 3) stride-2 kernel it was made from
    (the inverse of `space_to_depth.stem_weights`)."""
    o, c4 = w.shape[:2]
    c = c4 // 4
    out = np.zeros((o, c, 3, 3), w.dtype)
    for kh, (bh, sh) in _TAP.items():
        for kw, (bw, sw) in _TAP.items():
            k = (2 * sh + sw) * c
            out[:, :, kh, kw] = w[:, k:k + c, bh, bw]
    return out


def _graph(src):
    """The GraphProto of an ONNX file, or `src` itself when it is one already (loaded once by the caller)."""
    import onnx

    return src if isinstance(src, onnx.GraphProto) else onnx.load(str(src)).graph


def onnx_convs(src) -> list:
    """[(weight, bias)] of every Conv in graph order, as float arrays (src: a file or its GraphProto)."""
    from onnx import numpy_helper

    graph = _graph(src)
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    deq = _dequantized(graph, init)
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = deq.get(node.input[1], init.get(node.input[1]))
        b = deq.get(node.input[2], init.get(node.input[2])) if len(node.input) > 2 else None
        convs.append((np.asarray(w, np.float32), None if b is None else np.asarray(b, np.float32)))
    return convs


def _conv_bn_pairs(model: nn.Module) -> list:
    """(name, conv, batchnorm name or None) for every Conv2d in module order (= forward order here)."""
    mods = list(model.named_modules()) + [("", None)]
    return [(name, m, nxt_name if isinstance(nxt, nn.BatchNorm2d) else None)
            for (name, m), (nxt_name, nxt) in zip(mods, mods[1:]) if isinstance(m, nn.Conv2d)]


def state_dict_from_onnx(model: nn.Module, convs: list) -> dict:
    """A state dict for `model`'s layout with the ONNX weights; BatchNorms identity + folded bias."""
    pairs = _conv_bn_pairs(model)
    modules = dict(model.named_modules())
    if len(pairs) != len(convs):
        raise ValueError(f"the ONNX graph has {len(convs)} convolutions, the student {len(pairs)}: not this architecture")
    sd = {}
    for k, ((name, conv, bn_name), (w, b)) in enumerate(zip(pairs, convs)):
        if k == 0 and w.shape[1] == 4 * conv.in_channels and w.shape[-1] == 2:
            w = unstem(w)
        if w.shape[2:] != tuple(conv.kernel_size):
            raise ValueError(f"{name}: kernel {w.shape[2:]} in the ONNX graph, {tuple(conv.kernel_size)} in the student")
        sd[f"{name}.weight"] = torch.from_numpy(w.copy())
        bias = torch.from_numpy(b.copy()) if b is not None else torch.zeros(w.shape[0])
        if conv.bias is not None:
            sd[f"{name}.bias"] = bias
        elif bn_name is not None:
            n = w.shape[0]
            sd.update({f"{bn_name}.weight": torch.ones(n), f"{bn_name}.bias": bias,
                       f"{bn_name}.running_mean": torch.zeros(n), f"{bn_name}.running_var": torch.full((n,), 1 - modules[bn_name].eps),
                       f"{bn_name}.num_batches_tracked": torch.tensor(0)})
        else:
            raise ValueError(f"{name}: a bias-free convolution without a BatchNorm")
    return sd


@torch.no_grad()
def restore_batchnorm_stats(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> None:
    """Give each identity BatchNorm the statistics of its input on `x` while keeping its eval-mode
    output: mean m, var v, weight sqrt(v + eps), bias m + folded bias. Sums are gathered chunk by
    chunk (the inputs of every BatchNorm for 256 photos at 320 px would take tens of GB)."""
    model.eval()
    sums: dict = {}

    def gather(mod, inp, out):
        y = inp[0].double()
        n, s1, s2 = sums.get(mod, (0, 0.0, 0.0))
        sums[mod] = (n + y.numel() // y.shape[1], s1 + y.sum((0, 2, 3)), s2 + (y * y).sum((0, 2, 3)))

    hooks = [bn.register_forward_hook(gather) for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)]
    for part in x.split(chunk):
        model(part)
    for h in hooks:
        h.remove()
    for bn, (n, s1, s2) in sums.items():
        m = s1 / n
        v = (s2 / n - m * m).clamp_min(0)
        b = bn.bias.clone()   # the folded bias (the BatchNorm is still identity + b)
        bn.running_mean.copy_(m)
        bn.running_var.copy_(v)
        bn.weight.copy_((v + bn.eps).sqrt())
        bn.bias.copy_(m + b)


def conv_members(src, label: str = "") -> tuple[list, list]:
    """(for every Conv in graph order, the member it belongs to; each member's input side or None),
    members numbered by where their first Conv (the stem) stands in the graph.

    Why by ancestry and not by position: onnxruntime's optimizer interleaves the members' convolutions
    when it sorts the graph, but within one member their order is still the student's module order.
    A member is the set of convs downstream of one stem (the members meet only after their last conv).
    A member that runs at a smaller size than the graph's input reads it through index gathers
    (models/ensemble.py), whose index count is that size; None: it reads the input as it is.
    src: a file, or its GraphProto already loaded (then `label` names it in errors)."""
    from onnx import numpy_helper

    from .export import graph_index

    graph = _graph(src)
    init = {t.name: t for t in graph.initializer}
    producers, _ = graph_index(graph)
    stems_of: dict = {}          # tensor -> the stems it depends on
    members, stems = [], []
    for node in graph.node:      # an ONNX graph is stored in topological order
        deps = set().union(*(stems_of.get(i, set()) for i in node.input))
        if node.op_type == "Conv":
            if not deps:
                stems.append(node)
                deps = {len(stems) - 1}
            if len(deps) != 1:
                raise ValueError(f"{label or Path(str(src)).name}: a convolution reads several members at once")
            members.append(next(iter(deps)))
        for o in node.output:
            stems_of[o] = deps
    sizes = []
    for stem in stems:
        node, size = stem, None
        while node is not None and size is None:
            if node.op_type == "Gather" and node.input[1] in init:
                size = int(numpy_helper.to_array(init[node.input[1]]).size)
            node = producers.get(node.input[0])
        sizes.append(size)
    return members, sizes


def _heads_undone(convs: list, cals: list) -> list:
    """The last conv with the logit calibrations folded into it divided out again, innermost last:
    alpha = sigmoid(a2 (a1 z + c1) + c2) for a member's own (a1, c1) and the ensemble's (a2, c2)."""
    w, b = convs[-1]
    for cal in cals:
        a, c = (cal.get("scale", 1.0), cal.get("shift", 0.0)) if cal.get("applied", True) else (1.0, 0.0)
        w, b = w / a, (b - c) / a
    return convs[:-1] + [(w, b)]


def _student(cfg, convs: list, pruned: bool, x: torch.Tensor):
    """The student `cfg` with the ONNX convs' weights and BatchNorms that undo their inputs'
    statistics on the photos x (already at the student's size)."""
    from ..models.student import create_student
    from .prune import rebuild_pruned

    model = create_student(cfg)
    sd = state_dict_from_onnx(model, convs)
    if pruned:   # the state dict's shapes carry the pruned channel counts
        model = rebuild_pruned(cfg, sd)
    else:
        model.load_state_dict(sd)
    restore_batchnorm_stats(model, x)
    return model


def _pruning_record(model, cfg, source: str) -> dict:
    """What `edgecut compress prune` records, for a pruned member shipped only inside an ensemble."""
    from ..models.student import create_student
    from .prune import Counts

    now, base = Counts.of(model), Counts.of(create_student(cfg))
    return {"source": source, "macs": now.macs, "params": now.params, "base_macs": base.macs, "base_params": base.params,
            "input_size": cfg.input_size, "recovered": True}   # counted at the member's size


def _loaded(model_dir, photos: list):
    from ..runtime.imageio import load_rgb
    from ..runtime.session import Session

    model_dir = Path(model_dir)
    man = Manifest.load(model_dir / "manifest.json")
    extra = man.extra or {}
    if "variant" not in extra:
        raise ValueError(f"{model_dir.name}: its manifest names no student variant (not an edgecut student?)")
    if man.format != "onnx":   # the weights are read back from the ONNX graph's initializers
        raise ValueError(f"{model_dir.name}: a {man.format} file; weights are recovered from the model's ONNX file")
    graph = _graph(model_dir / man.file)
    convs = onnx_convs(graph)
    padding = extra.get("padding")
    if padding:   # zero channels the export added for onnxruntime's kernels (pad_channels.py)
        convs = unpad(convs, padding["convs"])
    pre = Session(model_dir, threads=1).preprocess   # photos seen as the runtime sees them
    x = torch.from_numpy(np.concatenate([pre(load_rgb(p)) for p in photos]))
    return man, extra, graph, convs, x


def _config(variant: dict):
    """By registry name, as every checkpoint is loaded (`student_from_checkpoint`), at the file's size."""
    from dataclasses import replace

    from ..models.variants import get_variant

    return replace(get_variant(variant["name"]), input_size=variant["input_size"])


def recover(model_dir, photos: list, keep_calibration: bool = False) -> dict:
    """A distill checkpoint dict (`{"model", "variant", "pruned"?, "input_size"}`) from a shipped
    single-student model folder, BatchNorm statistics measured on `photos` (paths); the logit
    calibration is divided out of the head unless `keep_calibration`."""
    man, extra, _, convs, x = _loaded(model_dir, photos)
    if extra.get("ensemble"):
        raise ValueError(f"{Path(model_dir).name} is an ensemble: recover_members gives its members")
    cfg = _config(extra["variant"])
    if not keep_calibration:
        convs = _heads_undone(convs, [extra.get("calibration") or {}])
    model = _student(cfg, convs, bool(extra.get("pruned")), x)
    ck = {"model": model.state_dict(), "variant": cfg.name, "input_size": cfg.input_size, "step": 0,
          "recovered_from": {"model": man.name, "sha256": man.sha256, "photos": len(photos)}}
    if extra.get("pruned"):
        ck["pruned"] = extra["pruned"]
    return ck


def recover_members(model_dir, photos: list, keep_calibration: bool = False) -> list[dict]:
    """One distill checkpoint per member of a shipped ensemble (`edgecut compress ensemble`), in the
    manifest's order, each with the raw logits it trained with: the ensemble's calibration and the
    member's own are divided out of its head, as `compress ensemble` fits the member's again (unless
    `keep_calibration`: then the mean of the members' logits is the shipped graph's).
    BatchNorm statistics come from `photos` brought to each member's size as the graph brings them."""
    from ..models.ensemble import _nearest_rows, _resized

    man, extra, graph, convs, x = _loaded(model_dir, photos)
    entries = extra.get("ensemble")
    if not entries:
        raise ValueError(f"{Path(model_dir).name} is a single student: recover gives it")
    owner, sizes = conv_members(graph, man.file)
    variants = extra["variant"]["members"]
    size = extra["variant"]["input_size"]
    stems = [size if s is None else s for s in sizes]
    if sorted(stems) != sorted(v["input_size"] for v in variants):
        raise ValueError(f"{Path(model_dir).name}: members at {stems} px in the graph, {[v['input_size'] for v in variants]} "
                         "in the manifest")
    free = list(range(len(stems)))
    out = []
    for k, (variant, entry) in enumerate(zip(variants, entries)):
        cfg = _config(variant)
        stem = next(i for i in free if stems[i] == cfg.input_size)   # members of one size: graph order
        free.remove(stem)
        mine = [c for c, o in zip(convs, owner) if o == stem]
        if not keep_calibration:
            mine = _heads_undone(mine, [extra.get("calibration") or {}, entry.get("calibration") or {}])
        xm = x if cfg.input_size == size else _resized(x, _nearest_rows(size, cfg.input_size))
        model = _student(cfg, mine, bool(entry.get("pruned")), xm)
        ck = {"model": model.state_dict(), "variant": cfg.name, "input_size": cfg.input_size, "step": 0,
              "recovered_from": {"model": man.name, "sha256": man.sha256, "member": k, "photos": len(photos)},
              "calibration": entry.get("calibration")}   # what `compress ensemble` folds in again if unchanged
        if entry.get("pruned"):
            ck["pruned"] = _pruning_record(model, cfg, f"{man.name} member {k} ({entry.get('source')})")
        out.append(ck)
    return out


def shipped_checkpoint(model_dir, photos: list) -> dict:
    """The checkpoint `edgecut export` takes to write a shipped model again, in another format or
    precision (fp32 ONNX, TFLite): the recovered weights with every logit calibration left folded in,
    so the export gives the shipped file's alpha up to its int8 rounding. Why not `recover` then
    `compress ensemble`: that path fits the calibrations again on held-out training photos, which a
    clone does not have, and the refit lands elsewhere on its grid (the training log's control C).
    The manifest's records ride along (`calibration_folded`, each member's source and soup) so that
    the new manifest says what the shipped one said."""
    man = Manifest.load(Path(model_dir) / "manifest.json")
    extra = man.extra or {}
    origin = {"model": man.name, "sha256": man.sha256, "photos": len(photos)}
    if not extra.get("ensemble"):
        ck = recover(model_dir, photos, keep_calibration=True)
    else:
        members = recover_members(model_dir, photos, keep_calibration=True)
        for ck, entry in zip(members, extra["ensemble"]):
            ck.update({"source": entry.get("source"), "soup": entry.get("soup")})
        ck = {"variant": extra["variant"]["name"], "ensemble": members, "step": 0, "recovered_from": origin}
    if extra.get("calibration"):
        ck["calibration_folded"] = extra["calibration"]
    ck["recovered_from"] = {**ck["recovered_from"], "as_shipped": True}   # calibrations kept: the shipped function
    return ck
