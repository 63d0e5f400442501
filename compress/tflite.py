"""TFLite (LiteRT) export of a student: fp32, or full-integer int8 by PT2E calibration.

Why litert-torch: it converts the torch module directly (torch.export -> StableHLO -> TFLite)
without TensorFlow; onnx2tf needs TensorFlow (1.9 GB) and downloads sample data at run time.
It lives in the `tflite` extra, imported only here.

The exported model takes NHWC input (`to_channel_last_io`): that is TFLite's native layout, so
the converter's leading transpose cancels out, and it is what phone code hands a model. The
manifest says `layout: NHWC` and the runtime's preprocessing follows it. The output stays
1x1xHxW (one channel: the same bytes in either layout).

int8 is PT2E static quantization with litert-torch's quantizer (symmetric per-channel int8
weights, histogram-observed activations) calibrated on real photos that go through the runtime's
own preprocessing; the input tensor is int8 too (the runtime quantizes it with the tensor's
scale). Measured: it works on ReLU students; hard-swish + squeeze-excite ones fail to convert.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..runtime.errors import EdgecutError
from ..runtime.manifest import Manifest, sha256_of
from .export import DEFAULT_DATA, DEFAULT_LICENSE, DEFAULT_TEACHER

INSTALL_HINT = "TFLite export needs the tflite extra: pip install 'edgecut[tflite]' (litert-torch, ai-edge-litert)"


def available() -> bool:
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """litert-torch prints a progress tree per conversion stage and torch a deprecation warning
    per stage; our verbs print their own lines."""
    import warnings

    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch's pytree deprecations, per stage
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def _calibration_inputs(model, photos) -> list:
    """NHWC float inputs for `photos`, through the runtime's preprocessing of this very model
    (a throwaway fp32 ONNX export gives a Session whose manifest matches the student's)."""
    import numpy as np
    import torch

    from ..runtime.imageio import load_rgb
    from ..runtime.session import Session
    from .export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        session = Session(export_onnx(model, tmp, "calibration"), threads=1)
        xs = [session.preprocess(load_rgb(p)) for p in photos]
    return [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1))) for x in xs]


def convert(model, int8: bool = False, calib_photos=None):
    """-> litert_torch model (has .export(path)) of `model` with NHWC input."""
    import torch

    try:
        import litert_torch
    except ImportError:
        raise EdgecutError(INSTALL_HINT) from None

    size = model.cfg.input_size
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    wrapped = litert_torch.to_channel_last_io(model, args=[0]).eval()
    sample = (torch.zeros(1, size, size, 3),)
    if not int8:
        with _quiet():
            return litert_torch.convert(wrapped, sample)
    if not calib_photos:
        raise EdgecutError("int8 TFLite export needs calibration photos")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inputs = _calibration_inputs(model, calib_photos)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _quiet():
        graph = prepare_pt2e(torch.export.export(wrapped, sample).module(), quantizer)
    # an exported graph ignores .eval(): without this, BatchNorm would calibrate on batch statistics
    graph = move_exported_model_to_eval(graph)
    with torch.no_grad():
        for x in inputs:
            graph(x)
    graph = move_exported_model_to_eval(convert_pt2e(graph, fold_quantize=False))
    graph.training = False   # the ops are in eval form now; this flag is all litert-torch checks
    with _quiet():
        return litert_torch.convert(graph, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def export_tflite(model, out_dir, name: str, int8: bool = False, calib_photos=None, *, teacher=DEFAULT_TEACHER,
                  data=DEFAULT_DATA, license=DEFAULT_LICENSE, notes: str = "", extra=None) -> Path:
    """Write <out_dir>/<name>/{model.tflite, manifest.json}; returns the folder."""
    from ..models.student import count_macs, count_params
    from ..runtime.backends import TfliteBackend

    edge = convert(model, int8, calib_photos)
    import litert_torch
    cfg = model.cfg
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_path = Path(tmp) / "model.tflite"
        with _quiet():
            edge.export(str(tmp_path))
        probe = TfliteBackend(tmp_path, 1)   # proves the file loads, and gives the tensor names
        tmp_path.replace(folder / "model.tflite")
    size = cfg.input_size
    quant = {}
    if int8:
        quant = {"quantization": {"tool": "litert-torch PT2EQuantizer", "weights": "int8 per-channel symmetric",
                                  "activations": "int8 (histogram observer)", "input": "int8",
                                  "calibration_photos": len(calib_photos)}}
    manifest = Manifest(
        name=name, file="model.tflite", format="tflite", precision="int8" if int8 else "fp32",
        input_size=(size, size), mean=tuple(cfg.mean), std=tuple(cfg.std), layout="NHWC",
        input_name=probe.input_name, output_name=probe.output_name, architecture=cfg.name,
        params=count_params(model), macs=count_macs(model, size), sha256=sha256_of(folder / "model.tflite"),
        teacher=teacher, data=data, license=license, notes=notes,
        extra={"variant": cfg.to_dict(), "converter": f"litert-torch {litert_torch.__version__}", **quant,
               **(extra or {})})
    manifest.save(folder / "manifest.json")
    return folder
