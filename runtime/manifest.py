"""The manifest: everything the runtime needs to run a model, and everything a user needs to trust it.

A model file never travels alone: preprocessing, output meaning and provenance live beside it in
JSON, so the runtime has one generic code path and adding a model means adding data, not code.
"""
from __future__ import annotations

import hashlib
import json
import math
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
        """Raises ValueError, naming the field, for a manifest the runtime could not run."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if not isinstance(kw.get("name"), str) or not kw["name"]:
            raise ValueError("'name' must be a non-empty string")
        for k in ("file", "format", "precision", "layout", "output_activation", "output_norm"):
            if k in kw and not isinstance(kw[k], str):
                raise ValueError(f"{k!r} must be a string, got {kw[k]!r}")
        for k in ("input_name", "output_name"):
            if kw.get(k) is not None and not isinstance(kw[k], str):
                raise ValueError(f"{k!r} must be a string or null, got {kw[k]!r}")
        if "input_size" in kw:
            kw["input_size"] = _numbers(kw["input_size"], "input_size", (2,), integer=True)
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = _numbers(kw[k], k, (3,))
        if any(v == 0 for v in kw.get("std", (1,))):
            raise ValueError("'std' must not contain 0")
        for k in ("params", "macs"):
            v = kw.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{k!r} must be a whole number or null, got {v!r}")
        for k in ("architecture", "sha256", "teacher", "data", "license", "notes"):
            if kw.get(k) is not None and not isinstance(kw[k], str):
                raise ValueError(f"{k!r} must be a string, got {kw[k]!r}")
        if "extra" in kw and not isinstance(kw["extra"], dict):
            raise ValueError("'extra' must be an object")
        return cls(**kw)

    @classmethod
    def load(cls, path) -> "Manifest":
        """The manifest at `path`, or an EdgecutError naming the file and what is wrong with it."""
        from .errors import EdgecutError

        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except UnicodeDecodeError:
            raise EdgecutError(f"{path}: not a manifest (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise EdgecutError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        except ValueError as e:
            raise EdgecutError(f"{path}: bad manifest: {e}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def save(self, path) -> None:
        from .imageio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _numbers(value, key: str, lengths: tuple, integer: bool = False) -> tuple:
    ok = isinstance(value, (list, tuple)) and len(value) in lengths and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if ok and integer:
        ok = all(float(v).is_integer() and v > 0 for v in value)
    if not ok:
        kind = "positive integers" if integer else "numbers"
        raise ValueError(f"{key!r} must be a list of {' or '.join(map(str, lengths))} {kind}, got {value!r}")
    return tuple(int(v) for v in value) if integer else tuple(value)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
