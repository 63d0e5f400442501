"""Export a trained student: fp32 ONNX, then int8 ONNX by calibrated static quantization.

Each model is written as a folder `<out>/<name>/` holding the model file, `manifest.json`
(how to run it and where it came from) and, for shipped models, `MODEL_CARD.md`: the runtime
loads such a folder by path, and `models/embedded/` holds exactly these folders.

int8 uses onnxruntime's static quantization in QDQ format (per-channel int8 weights, uint8
activations) calibrated on real photos that go through the runtime's own preprocessing, so the
activation ranges seen in calibration are the ones seen in use.
"""
from __future__ import annotations

import io
import random
import sys
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..runtime.manifest import Manifest, sha256_of
from ..runtime.imageio import write_text_atomic
from ..runtime.outputs import copy_folder, replace_folder

DEFAULT_TEACHER = ("IS-Net, img.ly @imgly/background-removal-data@1.4.5 '/models/medium' (fp16), "
                   "AGPL-3.0; used only to label training photos, none of its weights are shipped")
DEFAULT_DATA = ("../shared/data/train: caltech101, imagenette, imagenet_sample_1000, portrait_shen2016_nontest, "
                "ccp_unlabeled, cats_dogs, grocery_store (research-use terms; ImageNet terms for the ImageNet "
                "subsets), labelled by the teacher")
# Terms of the training sets in ../shared/data/README.md; any set not named here: research use.
SET_TERMS = {"clothing": "CC0 1.0", "imagenette": "ImageNet terms", "imagenet_sample_1000": "ImageNet terms"}


def describe_data(*run_dirs) -> str:
    """The training sets the runs saw (their split.json; several for an ensemble) and their terms, for
    the manifest: a model says what it learnt from. DEFAULT_DATA where a run folder does not say."""
    from .loaders import read_run_json

    sets = []
    for run_dir in run_dirs:   # a split.json that is not JSON or names no list of sets: one line naming it
        found = (read_run_json(Path(run_dir) / "split.json") or {}).get("sets")
        if not found:
            return DEFAULT_DATA
        sets += [s for s in found if s not in sets]
    sets.sort()
    other = [s for s in sets if s not in SET_TERMS]
    terms = ([f"{', '.join(other)}: research use"] if other else []) + \
        [f"{s}: {SET_TERMS[s]}" for s in sets if s in SET_TERMS]
    return f"training sets {', '.join(sets)} ({'; '.join(terms)}), labelled by the teacher"


DEFAULT_LICENSE = ("code Apache-2.0; weights trained on research-use photos: research and evaluation use, "
                   "see MODEL_CARD.md")


def student_from_checkpoint(ck: dict, variant=None):
    """The network of a loaded distill checkpoint, or of a pruned one (`edgecut compress prune`:
    its tensor shapes carry the pruned channel counts), with its weights. `variant` (default: the
    checkpoint's) lets a run start from another variant's weights, e.g. the same student at 320 px.
    A checkpoint trained at its own `input_size` keeps it."""
    from ..models.student import create_student
    from ..models.variants import get_variant

    if variant is None:
        variant = ck["variant"]
        if ck.get("input_size"):   # trained at another size than the variant's (`--input-size`)
            variant = replace(get_variant(variant), input_size=ck["input_size"])
    if ck.get("ensemble"):   # `edgecut compress ensemble`: the members, each at its own size
        from ..models.ensemble import Ensemble

        return Ensemble([student_from_checkpoint(m) for m in ck["ensemble"]], name=ck["variant"])
    if ck.get("pruned"):
        from .prune import rebuild_pruned

        return rebuild_pruned(variant, ck["model"])
    model = create_student(variant)
    model.load_state_dict(ck["model"])
    return model


def load_student(checkpoint):
    """A student from a checkpoint file (best.pt / last.pt / pruned.pt), in eval mode; a file that is
    none is an EdgecutError naming it (loaders.load_checkpoint)."""
    from .loaders import load_checkpoint, student_from

    ck = load_checkpoint(checkpoint)
    return student_from(ck, checkpoint).eval(), ck


def export_onnx(model, out_dir, name: str, *, teacher=DEFAULT_TEACHER, data=DEFAULT_DATA,
                license=DEFAULT_LICENSE, notes: str = "", extra=None) -> Path:
    """Write <out_dir>/<name>/{model.onnx, manifest.json}; returns the folder."""
    import torch

    from ..models.student import count_macs, count_params

    cfg = model.cfg
    folder = Path(out_dir) / name
    size = cfg.input_size
    model = model.eval().to(memory_format=torch.contiguous_format)
    with _new_folder(folder):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            tmp_path = Path(tmp) / "model.onnx"
            graph = io.BytesIO()   # torch's C++ writer takes no path whose name is not UTF-8; Python's open does
            torch.onnx.export(model, torch.zeros(1, 3, size, size), graph, input_names=["input"],
                              output_names=["alpha"], opset_version=17, dynamo=False, do_constant_folding=True)
            tmp_path.write_bytes(graph.getvalue())
            tmp_path.replace(folder / "model.onnx")
    manifest = Manifest(
        name=name, file="model.onnx", format="onnx", precision="fp32", input_size=(size, size),
        mean=tuple(cfg.mean), std=tuple(cfg.std), input_name="input", output_name="alpha",
        architecture=cfg.name, params=count_params(model), macs=count_macs(model, size),
        sha256=sha256_of(folder / "model.onnx"), teacher=teacher, data=data, license=license, notes=notes,
        extra={"variant": cfg.to_dict(), **(extra or {})})
    manifest.save(folder / "manifest.json")
    return folder


@contextmanager
def _new_folder(folder: Path):
    """Make `folder` for an export; if the export fails and the folder was made here, remove it, so a
    failed step leaves no empty NAME-int8 folder that looks like a model."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def calibration_photos(folder, n: int, seed: int = 0, warned=None) -> list[Path]:
    """n readable photos sampled reproducibly from a folder tree (the training photos are a good
    choice). A file that does not decode (a text file named .jpg, a truncated download) is skipped
    with one warning on stderr naming it (once per path in `warned`, a set shared by the calls of
    one verb) and the next photo takes its place; none readable is an EdgecutError."""
    from ..runtime.errors import EdgecutError

    exts = {".jpg", ".jpeg", ".png", ".webp"}
    if not Path(folder).is_dir():   # a photo or a typo: "no photos under it" would send the user looking in it
        raise FileNotFoundError(f"{folder}: {'not a folder of photos' if Path(folder).exists() else 'no such folder'}")
    photos = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts and "teacher" not in p.parts
                    and "masks" not in p.parts)
    if not photos:
        raise FileNotFoundError(f"no calibration photos under {folder}")
    random.Random(seed).shuffle(photos)
    warned = set() if warned is None else warned
    kept, bad = [], []
    for p in photos:
        if len(kept) == n:
            break
        why = _unreadable_photo(p)
        if why:
            bad.append((p, why))
        else:
            kept.append(p)
    if not kept:
        first, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise EdgecutError(f"{first}: {why}; no readable calibration photo under {folder}{more}")
    for p, why in bad:
        _warn_skip(p, why, warned)
    return kept


def _unreadable_photo(path) -> str:
    """'' when the photo decodes as the runtime reads it, else why not (without the file's name)."""
    from ..runtime.errors import EdgecutError
    from ..runtime.imageio import load_rgb

    try:
        load_rgb(path)
    except (EdgecutError, OSError, ValueError, SyntaxError, EOFError) as e:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        for prefix in (f"{path}: ", f"{Path(path).name}: "):
            if text.startswith(prefix):
                return text[len(prefix):]
        return text
    return ""


def _warn_skip(path, why: str, warned: set) -> None:
    if path not in warned:
        warned.add(path)
        print(f"warning: skip {path}: {why}", file=sys.stderr)


class _PhotoReader:
    """onnxruntime CalibrationDataReader over photos, through the runtime's preprocessing; a photo
    that no longer decodes is skipped with one warning (`calibration_photos` has checked them)."""

    def __init__(self, session, photos, warned=None):
        self._session, self._photos = session, iter(photos)
        self._name = session.manifest.input_name
        self._warned = set() if warned is None else warned

    def get_next(self):
        from ..runtime.errors import EdgecutError
        from ..runtime.imageio import load_rgb

        for p in self._photos:
            try:
                return {self._name: self._session.preprocess(load_rgb(p))}
            except (EdgecutError, OSError, ValueError) as e:
                _warn_skip(p, (str(e).splitlines() or [type(e).__name__])[0], self._warned)
        return None


def compact_onnx(src, dst) -> None:
    """Rewrite a QDQ model without what only a debugger needs: tensors and nodes renamed t0, t1, ...
    (the graph's inputs and outputs keep theirs), and the all-zero zero-points of int8 weights and
    int32 biases dropped (DequantizeLinear defaults to zero). The arithmetic is
    untouched; the shipped edgecut-small shrank from 839 KB to 709 KB: 100 KB of names like
    '/decoder/blocks.3/.../Relu_output_0', 29 KB of int32 zeros.
    The per-layer report matches tensors by name, so it runs on the uncompacted model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    for node in graph.node:   # weights (int8) and biases (int32) come with per-channel zeros
        if (node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[0] in init
                and node.input[2] in init
                and init[node.input[0]].data_type == init[node.input[2]].data_type
                and not numpy_helper.to_array(init[node.input[2]]).any()):
            del node.input[2]
    used = {i for node in graph.node for i in node.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def quantize_int8(fp32_folder, out_dir, name: str, photos, method: str = "minmax",
                  per_channel: bool = True, exclude_nodes=(), compact: bool = True, portable: bool = True) -> Path:
    """Static int8 (QDQ) copy of an exported fp32 folder -> <out_dir>/<name>/ (compact_onnx'd
    unless `compact` is False: the per-layer report needs the original tensor names).

    `portable` (default) makes the int8 arithmetic exact, so x86 and ARM give the same alpha:
    Resize in float and one scale per residual group (see portable.py), and 7-bit weights for
    the GEMM convolutions, which AVX2 x86 without VNNI would otherwise saturate (seven_bit.py).
    It costs one more calibration pass over `photos`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..runtime.session import Session
    from .portable import calibrated_ranges, residual_groups, resize_nodes, shared_scales
    from .seven_bit import seven_bit_weights

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    fp32_folder = Path(fp32_folder)
    manifest = Manifest.load(fp32_folder / "manifest.json")
    folder = Path(out_dir) / name
    with _new_folder(folder):   # a failed step leaves no empty NAME-int8 folder
        session = Session(fp32_folder)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_folder / manifest.file), str(pre), skip_symbolic_shape=True)
            out = Path(tmp) / "model.onnx"
            excluded, options, groups, warned = list(exclude_nodes), {}, [], set()
            if portable:
                excluded += [n for n in resize_nodes(pre) if n not in excluded]
                groups = residual_groups(pre)
                ranges = calibrated_ranges(pre, _PhotoReader(session, photos, warned), methods[method])
                options["TensorQuantOverrides"] = shared_scales(groups, ranges)
            quantize_static(str(pre), str(out), _PhotoReader(session, photos, warned), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=excluded, extra_options=options)
            seven_bit = seven_bit_weights(out) if portable else 0
            done = {"stem": False, "moves": 0, "padding": {}}
            if compact:   # the shipping form; the per-layer report needs the names and graph as quantized
                compact_onnx(out, out)
                done = speed_rewrites(out)
            out.replace(folder / "model.onnx")
        q = replace(manifest, name=name, precision="int8", sha256=sha256_of(folder / "model.onnx"),
                    extra={**manifest.extra, "quantization": {
                        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                        "weights": "int8 per-channel" if per_channel else "int8 per-tensor", "activations": "uint8",
                        "calibration": method, "calibration_photos": len(photos),
                        "portable": {"float_resize": True, "shared_scale_groups": len(groups),
                                     **seven_bit_record(seven_bit),
                                     "why": PORTABLE_WHY}
                        if portable else False,
                        "float_ops": float_ops(folder / "model.onnx"), "float_nodes": list(exclude_nodes),
                        "stem": STEM_NOTE if done["stem"] else "as exported", "uint8_moves": done["moves"]},
                    **({"padding": done["padding"]} if done["padding"] else {})})
        q.save(folder / "manifest.json")
    return folder


STEM_NOTE = "space-to-depth 2x2 (exact, faster)"
PORTABLE_WHY = "exact int8 arithmetic: x86 (with or without VNNI) and ARM give the same alpha"


def seven_bit_record(convs: int) -> dict:
    """The manifest's note of `seven_bit.seven_bit_weights` (count of convs rewritten)."""
    return {"seven_bit_gemm_weights": convs,
            "seven_bit_why": "non-depthwise conv weights within +-64, so AVX2 x86 without VNNI cannot "
                             "saturate its int16 pair sums (compress/seven_bit.py)"}


def speed_rewrites(path) -> dict:
    """The exact rewrites of a compact QDQ file that onnxruntime runs faster, in place: the SpaceToDepth
    stem, quantizing before data movement, zero channels up to multiples of 16 (each module says why).
    Returns what each did: {"stem": bool, "moves": count, "padding": {} or its record}."""
    from .pad_channels import MULTIPLE, pad_channels
    from .space_to_depth import rewrite_stem
    from .uint8_moves import quantize_before_moves

    stem = rewrite_stem(path)
    moves = quantize_before_moves(path)
    padded = pad_channels(path)
    return {"stem": stem, "moves": moves, "padding": {"multiple": MULTIPLE, "convs": padded} if padded else {}}


def rewrite_folder(src, out_dir, name: str) -> tuple:
    """`seven_bit_weights` and `speed_rewrites` on a copy of an exported ONNX folder (one made before
    some of them existed), written as <out_dir>/<name>/ with its manifest brought up to date. Returns
    (folder, what was done); folder None and nothing written when every rewrite was a no-op."""
    from .seven_bit import seven_bit_weights

    src, out_dir = Path(src), Path(out_dir)
    m = Manifest.load(src / "manifest.json")
    if m.format != "onnx":
        raise ValueError(f"{src}: a {m.format} model; the rewrites are for ONNX files")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp) / name
        copy_folder(src, work)
        seven_bit = seven_bit_weights(work / m.file)
        done = {"seven_bit": seven_bit, **speed_rewrites(work / m.file)}
        if not (seven_bit or done["stem"] or done["moves"] or done["padding"]):
            return None, done
        extra = dict(m.extra or {})
        if m.precision == "int8":
            q = dict(extra.get("quantization") or {})
            q.update(float_ops=float_ops(work / m.file), uint8_moves=q.get("uint8_moves", 0) + done["moves"])
            if seven_bit and isinstance(q.get("portable"), dict):
                q["portable"] = {**q["portable"], **seven_bit_record(seven_bit),
                                 "why": PORTABLE_WHY}
            elif seven_bit:
                q["seven_bit"] = seven_bit_record(seven_bit)
            if done["stem"]:
                q["stem"] = STEM_NOTE
            extra["quantization"] = q
        if done["padding"]:
            extra["padding"] = done["padding"]
        replace(m, name=name, sha256=sha256_of(work / m.file), extra=extra).save(work / "manifest.json")
        dest = out_dir / name
        replace_folder(work, dest)
    return dest, done


# Ops that onnxruntime runs on uint8 only by dropping the DQ/Q pair around them, which it does
# only when both carry the same scale and zero point; otherwise they run in float between the two.
_DROP_QDQ_OPS = ("Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "Slice")


def graph_index(graph) -> tuple:
    """(producer node of each tensor, consumer nodes of each tensor) of an ONNX graph."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producers, consumers


def quant_params(node, inits: dict) -> tuple:
    """A QuantizeLinear's or DequantizeLinear's scale and zero point, comparable between nodes: the
    initializers' bytes (a tensor name where one is not an initializer)."""
    from onnx import numpy_helper

    return tuple(numpy_helper.to_array(inits[i]).tobytes() if i in inits else i for i in node.input[1:3])


def float_ops(path) -> dict:
    """Op types that still compute in float in a QDQ model: those whose inputs are not all dequantized
    int8 tensors (onnxruntime fuses DQ -> op -> Q into an integer kernel only in that case), and
    data-movement ops whose input and output quantization differ (see _DROP_QDQ_OPS)."""
    import onnx
    from onnx import numpy_helper

    from .uint8_moves import integer_tensors

    graph = onnx.load(str(path)).graph
    producers, consumers = graph_index(graph)
    weights = {i.name: i for i in graph.initializer}
    integer = integer_tensors(graph)

    counts: dict = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data_inputs = [i for i in n.input if i and i not in weights]
        dq = [producers.get(i) for i in data_inputs]
        if data_inputs and all(i in integer for i in data_inputs):
            continue     # moves the integers themselves (uint8_moves.py, pad_channels' Slices)
        if data_inputs and all(d is not None and d.op_type == "DequantizeLinear" for d in dq):
            if n.op_type not in _DROP_QDQ_OPS:
                continue
            qs = [c for c in consumers.get(n.output[0], []) if c.op_type == "QuantizeLinear"]
            if len(qs) == 1 and quant_params(qs[0], weights) == quant_params(dq[0], weights):
                continue
        elif not data_inputs:
            continue
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def embed(folder, name: str, default: bool = False, embedded_dir=None) -> Path:
    """Copy an exported folder into the package's models/embedded/<name>/ (renamed in its manifest),
    with a model card; `default` also makes it the model `edgecut remove` uses."""
    from ..models import embedded_dir as package_embedded_dir
    from . import model_card

    root = Path(embedded_dir) if embedded_dir else package_embedded_dir()
    dest = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    copy_folder(folder, tmp)
    m = Manifest.load(tmp / "manifest.json")
    replace(m, name=name).save(tmp / "manifest.json")
    replace_folder(tmp, dest)
    model_card.write(dest)
    if default:
        write_text_atomic(root / "DEFAULT", name + "\n")
    return dest


# --- the summary table printed after `edgecut export` --------------------------------------------
def measure_export(folder, quick_iou: int = 0, runs: int = 5, sets=None) -> dict:
    """Facts for one exported folder: file size, ms per image at the model's resolution (1 thread,
    median of `runs`) and, with `quick_iou`, the mean IoU over that many images of each of `sets`
    (the bench sets; found before the export, so a missing or empty one fails before any work)."""
    from ..bench.latency import time_infer
    from ..runtime.session import Session

    folder = Path(folder)
    m = Manifest.load(folder / "manifest.json")
    session = Session(folder, threads=1)
    row = {"size_mb": (folder / m.file).stat().st_size / 1e6,
           "ms": time_infer(session, runs=runs, warmup=2)["p50_ms"], "iou": None}
    if quick_iou:
        from ..bench.accuracy import _warn, default_data_dir, evaluate_set, find_sets

        sets = sets if sets is not None else find_sets(default_data_dir())
        ious = [evaluate_set(session, s, limit=quick_iou, log=_warn)["iou"] for s in sets]
        ious = [v for v in ious if v is not None]
        row["iou"] = float(np.mean(ious)) if ious else None
    return row


def summary_table(rows) -> str:
    """Ultralytics-style: one line per export attempted. rows: dicts with format, precision, status,
    and for successes size_mb, ms and iou (None: not measured)."""
    head = f"{'Format':<8} {'Precision':<9} {'Status':<8} {'Size (MB)':>9} {'IoU':>7} {'ms/img':>8}  Folder / reason"
    lines = [head]
    for r in rows:
        ok = r["status"] == "ok"
        size = f"{r['size_mb']:9.2f}" if ok else f"{'-':>9}"
        iou = f"{r['iou']:7.4f}" if ok and r.get("iou") is not None else f"{'-':>7}"
        ms = f"{r['ms']:8.2f}" if ok else f"{'-':>8}"
        lines.append(f"{r['format']:<8} {r['precision']:<9} {r['status']:<8} {size} {iou} {ms}  "
                     f"{r.get('folder', '') if ok else r.get('reason', '')}")
    return "\n".join(lines)
