"""Inference engines behind one tiny interface: `run(x) -> y` on float32 arrays.

ONNX Runtime is the default engine; LiteRT/TFLite is optional (phones, microcontrollers) and
only imported when a .tflite model is asked for, so the base install never needs it.
Quantized tflite tensors are (de)quantized here with the tensor's own scale and zero point,
so the rest of the runtime only ever sees float32.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import EdgecutError

_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _utf8_path(path: Path) -> bool:
    """onnxruntime and LiteRT take a path as a UTF-8 string; a file name with bytes that are not
    UTF-8 (decoded by Python to lone surrogates) cannot be passed, so such a model is read into
    memory and given as bytes instead."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class OnnxBackend:
    def __init__(self, path: Path, threads: Optional[int], input_name=None, output_name=None):
        import onnxruntime as ort

        self.path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)   # 0: onnxruntime picks (all cores)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            source = str(path) if _utf8_path(path) else Path(path).read_bytes()
            self.sess = ort.InferenceSession(source, sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise EdgecutError(f"{path}: cannot load ONNX model ({str(e).splitlines()[0]})") from None
        inputs = {i.name: i for i in self.sess.get_inputs()}
        outputs = [o.name for o in self.sess.get_outputs()]
        if input_name and input_name not in inputs:
            raise EdgecutError(f"{path}: no input named {input_name!r} (has {', '.join(inputs)})")
        if output_name and output_name not in outputs:
            raise EdgecutError(f"{path}: no output named {output_name!r} (has {', '.join(outputs)})")
        inp = inputs[input_name] if input_name else self.sess.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)   # ints where static, names/None where dynamic
        self.input_dtype = _ORT_FLOAT.get(inp.type, np.float32)
        self.output_name = output_name or outputs[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            y = self.sess.run([self.output_name], {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        except MemoryError:
            raise
        except Exception as e:   # a model whose input the manifest misdescribes: its own types again
            raise EdgecutError(f"{self.path}: inference failed ({str(e).splitlines()[0]})") from None
        return np.asarray(y, dtype=np.float32)


def _tflite_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise EdgecutError(
                "running .tflite models needs LiteRT: pip install ai-edge-litert") from None
    return Interpreter


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        raise EdgecutError("quantized tflite input without a scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32, copy=False)
    scale, zero = detail.get("quantization", (0.0, 0))
    return (y.astype(np.float32) - zero) * np.float32(scale or 1.0)


class TfliteBackend:
    def __init__(self, path: Path, threads: Optional[int], input_name=None, output_name=None):
        Interpreter = _tflite_interpreter_class()
        try:
            where = {"model_path": str(path)} if _utf8_path(path) else {"model_content": Path(path).read_bytes()}
            self.interp = Interpreter(**where, num_threads=threads or None)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as e:
            raise EdgecutError(f"{path}: cannot load tflite model ({e})") from None
        self.inp = self._pick(self.interp.get_input_details(), input_name, path, "input")
        self.out = self._pick(self.interp.get_output_details(), output_name, path, "output")
        self.input_name = self.inp["name"]
        self.output_name = self.out["name"]
        self.input_shape = ()                 # tflite inputs are resized to what we feed
        self._lock = threading.Lock()         # one interpreter is not safe to share across threads

    @staticmethod
    def _pick(details, name, path, what):
        if not name:
            return details[0]
        for d in details:
            if d["name"] == name:
                return d
        raise EdgecutError(f"{path}: no {what} named {name!r} (has {', '.join(d['name'] for d in details)})")

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if tuple(self.inp["shape"]) != x.shape:
            self.interp.resize_tensor_input(self.inp["index"], list(x.shape))
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[
                [d["index"] for d in self.interp.get_input_details()].index(self.inp["index"])]
        self.interp.set_tensor(self.inp["index"], _quantize(x, self.inp))
        self.interp.invoke()
        return _dequantize(self.interp.get_tensor(self.out["index"]), self.out)


def open_backend(path: Path, fmt: str, threads: Optional[int], input_name=None, output_name=None):
    cls = TfliteBackend if fmt == "tflite" or Path(path).suffix.lower() == ".tflite" else OnnxBackend
    return cls(Path(path), threads, input_name=input_name, output_name=output_name)
