"""Where int8 loses accuracy, and leaving the worst layers in float (mixed precision).

The per-layer report runs the pre-processed fp32 model and its QDQ copy on a few real photos
with every intermediate tensor exposed (onnxruntime's `qdq_loss_debug`), and gives for each
quantized activation two signal-to-quantization-noise ratios (dB, higher is better):
  - local: the tensor before its QuantizeLinear vs after its DequantizeLinear, i.e. the noise
    this tensor's own int8 range adds; it singles out the layers that are hard to quantize;
  - cumulative: the fp32 model's tensor vs the int8 model's, i.e. all the noise up to there.
Mixed precision keeps the K tensors with the worst local SQNR in float: every node that produces
or consumes one is excluded from quantization, since onnxruntime quantizes a tensor as soon as
any node touching it is quantized.

The quantization itself is `export.quantize_int8` (static QDQ, per-channel weights, the model's
own pre-processing first, calibration through the runtime's preprocessing).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..runtime.manifest import Manifest, sha256_of


@dataclass
class LayerError:
    tensor: str
    node: str                 # the node producing the tensor ("" for a graph input)
    op: str
    local_db: float           # SQNR of this tensor's own quantization
    cumulative_db: Optional[float]   # SQNR vs the fp32 model's tensor


def _inputs(session, photos) -> list:
    from ..runtime.imageio import load_rgb

    name = session.manifest.input_name
    return [{name: session.preprocess(load_rgb(p))} for p in photos]


def _preprocessed(fp32_folder: Path, tmp: Path) -> Path:
    """The fp32 model as quantize_int8 saw it (same pre-processing), so tensor and node names match."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = Manifest.load(fp32_folder / "manifest.json")
    pre = tmp / "pre.onnx"
    quant_pre_process(str(fp32_folder / m.file), str(pre), skip_symbolic_shape=True)
    return pre


def _activations(model_path: Path, tmp: Path, inputs) -> dict:
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    augmented = tmp / f"{model_path.stem}-all-outputs.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    return collect_activations(str(augmented), inputs)


def layer_errors(fp32_folder, int8_folder, photos) -> list[LayerError]:
    """Per-activation SQNR of an int8 folder against its fp32 folder on `photos`, worst local first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    from ..runtime.session import Session

    fp32_folder, int8_folder = Path(fp32_folder), Path(int8_folder)
    inputs = _inputs(Session(fp32_folder, threads=1), photos)
    m8 = Manifest.load(int8_folder / "manifest.json")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre = _preprocessed(fp32_folder, tmp)
        float_acts = _activations(pre, tmp, inputs)
        qdq_acts = _activations(int8_folder / m8.file, tmp, inputs)
        graph = onnx.load(str(pre)).graph
    producers = {o: n for n in graph.node for o in n.output}
    rows = []
    for tensor, match in create_activation_matching(qdq_acts, float_acts).items():
        node = producers.get(tensor)
        pre = match["pre_qdq"]
        if node is not None and node.op_type == "Relu":
            # onnxruntime fuses Conv+Relu: the QDQ model's "pre" tensor is the conv output, and the
            # uint8 range does the ReLU. Without this, every ReLU would read as ~2 dB of "noise".
            pre = [np.maximum(a, 0) for a in pre]
        cumulative = sqnr(match["float"], match["post_qdq"]) if "float" in match else None
        rows.append(LayerError(tensor, node.name if node else "", node.op_type if node else "input",
                               sqnr(pre, match["post_qdq"]), cumulative))
    if not rows:
        from ..runtime.errors import EdgecutError
        raise EdgecutError(f"{int8_folder}: no tensor matches the fp32 model's; was it compacted "
                           "(export.compact_onnx renames tensors)? Re-quantize with the report on")
    return sorted(rows, key=lambda r: r.local_db)


def sqnr(reference, test) -> float:
    """Signal-to-quantization-noise ratio in dB (onnxruntime's definition)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return float(compute_signal_to_quantization_noice_ratio(list(reference), list(test)))


def nodes_touching(model_path, tensors: Sequence[str]) -> list[str]:
    """The nodes that produce or consume any of `tensors` (in graph order); for a tensor made by a
    ReLU, the op feeding that ReLU too, so the whole conv+ReLU layer stays float."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    wanted = set(tensors)
    for t in tensors:
        node = producers.get(t)
        if node is not None and node.op_type in ("Relu", "Clip"):
            wanted.add(node.input[0])
    return [n.name for n in graph.node if wanted & set(n.output) or set(tensors) & set(n.input)]


def output_mae(fp32_folder, int8_folder, photos) -> float:
    """Mean absolute difference of the alpha (0..1) the two models give on `photos`."""
    from ..runtime.imageio import load_rgb
    from ..runtime.session import Session

    a, b = Session(fp32_folder, threads=1), Session(int8_folder, threads=1)
    return float(np.mean([np.abs(a.infer(load_rgb(p)) - b.infer(load_rgb(p))).mean() for p in photos]))


def _quantizes(folder) -> bool:
    """Whether an exported folder's model quantizes anything (has a QuantizeLinear node)."""
    import onnx

    m = Manifest.load(Path(folder) / "manifest.json")
    graph = onnx.load(str(Path(folder) / m.file), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def check_exclusions(fp32_folder, exclude: Sequence[str] = (), auto_exclude: int = 0) -> None:
    """Before any quantization: every --exclude name a node of the model (as the report names them:
    the pre-processed graph's, or the file's own), and --auto-exclude K no more than its nodes."""
    import onnx

    from ..runtime.errors import EdgecutError

    fp32_folder = Path(fp32_folder)
    m = Manifest.load(fp32_folder / "manifest.json")
    names = {n.name for n in onnx.load(str(fp32_folder / m.file), load_external_data=False).graph.node}
    count = len(names)
    if exclude and not set(exclude) <= names:
        with tempfile.TemporaryDirectory() as tmp:
            pre = {n.name for n in onnx.load(str(_preprocessed(fp32_folder, Path(tmp)))).graph.node}
        count, names = max(count, len(pre)), names | pre
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise EdgecutError(f"--exclude {' '.join(unknown)}: no such node in {fp32_folder / m.file} "
                           "(the node names are those of --report)")
    if auto_exclude > count:
        raise EdgecutError(f"--auto-exclude {auto_exclude}: {fp32_folder / m.file} has only {count} nodes")


@dataclass
class QuantizeResult:
    folder: Path
    excluded: list            # nodes left in float
    errors: Optional[list]    # LayerError rows of the final model (with a report)
    output_mae: Optional[float]


def quantize_model(fp32_folder, out_dir, name: str, photos, method: str = "minmax", per_channel: bool = True,
                   exclude: Sequence[str] = (), auto_exclude: int = 0, report_photos=None,
                   portable: bool = True) -> QuantizeResult:
    """quantize_int8, optionally leaving the `auto_exclude` most sensitive activations in float
    (measured by a first full-int8 pass on `report_photos`), optionally with the per-layer report."""
    from .export import compact_onnx, quantize_int8

    fp32_folder = Path(fp32_folder)
    excluded = list(exclude)
    probe = report_photos or photos[:4]
    if auto_exclude > 0:
        with tempfile.TemporaryDirectory() as tmp:
            first = quantize_int8(fp32_folder, tmp, name, photos, method, per_channel, excluded, compact=False,
                                  portable=portable)
            ranked = layer_errors(fp32_folder, first, probe)
            worst = [e.tensor for e in ranked[:auto_exclude]]
            with tempfile.TemporaryDirectory() as tmp2:
                pre = _preprocessed(fp32_folder, Path(tmp2))
                excluded += [n for n in nodes_touching(pre, worst) if n not in excluded]
    folder = quantize_int8(fp32_folder, out_dir, name, photos, method, per_channel, excluded,
                           compact=not report_photos, portable=portable)
    if auto_exclude > 0 and not _quantizes(folder):
        from ..runtime.errors import EdgecutError

        raise EdgecutError(f"--auto-exclude {auto_exclude}: leaving the {len(worst)} most sensitive of the model's "
                           f"{len(ranked)} quantized activations in float (with the nodes around them) leaves "
                           "nothing in int8; pass a smaller K")
    errors = mae = None
    if report_photos:
        errors = layer_errors(fp32_folder, folder, report_photos)
        compact_onnx(folder / "model.onnx", folder / "model.onnx")
        manifest = Manifest.load(folder / "manifest.json")
        replace(manifest, sha256=sha256_of(folder / "model.onnx")).save(folder / "manifest.json")
        mae = output_mae(fp32_folder, folder, report_photos)
    return QuantizeResult(folder, excluded, errors, mae)


def report_table(errors: Sequence[LayerError], limit: Optional[int] = 20) -> str:
    """Worst layers first; the node name is what --exclude takes (the tensor is its output)."""
    rows = list(errors)[:limit] if limit else list(errors)
    width = max([len("node (output quantized)")] + [len(r.node or r.tensor) for r in rows])
    lines = [f"{'node (output quantized)':<{width}}  {'op':<12}  {'local dB':>8}  {'cumul. dB':>9}"]
    for r in rows:
        cum = f"{r.cumulative_db:9.1f}" if r.cumulative_db is not None else f"{'-':>9}"
        lines.append(f"{r.node or r.tensor:<{width}}  {r.op:<12}  {r.local_db:8.1f}  {cum}")
    if limit and len(errors) > limit:
        lines.append(f"... {len(errors) - limit} more (higher SQNR)")
    return "\n".join(lines)


def errors_json(errors: Sequence[LayerError]) -> list:
    return [asdict(e) for e in errors]
