"""The manifest: everything the runtime needs to run a model, and everything a user needs to trust it.

A model file never travels alone: preprocessing, output meaning and provenance live beside it in
JSON, so the runtime has one generic code path and adding a model means adding data, not code.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional


@dataclass
class Manifest:
    name: str
    file: str = "model.onnx"              # relative to the manifest's folder
    format: str = "onnx"                  # onnx | tflite
    precision: str = "fp32"               # fp32 | fp16 | int8
    input_size: tuple = (256, 256)        # (height, width) the photo is resized to (stretched)
    mean: tuple = (0.485, 0.456, 0.406)   # on x / 255
    std: tuple = (0.229, 0.224, 0.225)
    layout: str = "NCHW"                  # NCHW | NHWC
    input_name: Optional[str] = None      # None: the model's first input
    output_name: Optional[str] = None     # None: the model's first output
    output_activation: str = "none"       # none | sigmoid (applied by the runtime)
    output_norm: str = "none"             # none | minmax (rembg-style u2net outputs)
    # Provenance and facts, for `edgecut models` and model cards.
    architecture: str = ""
    params: Optional[int] = None
    macs: Optional[int] = None
    sha256: Optional[str] = None
    teacher: str = ""
    data: str = ""
    license: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("input_size", "mean", "std"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @classmethod
    def load(cls, path) -> "Manifest":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def save(self, path) -> None:
        from .imageio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
