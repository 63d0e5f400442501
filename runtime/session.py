"""A loaded model, ready to turn photos into alpha mattes: create once, call many times.

Everything model-specific (input size, normalisation, layout, output activation) comes from the
manifest, so one code path serves the shipped student, a user's own export, or the teacher.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .argtypes import MAX_THREADS
from .backends import open_backend
from .errors import EdgecutError
from .manifest import Manifest
from .upsample import GuidedUpsample, upsample_alpha

__all__ = ["Session", "new_session"]

PhotoLike = Union[np.ndarray, Image.Image]
_ACTIVATIONS = ("none", "sigmoid")
_NORMS = ("none", "minmax")
TTA_SUFFIX = "+tta"   # how benchmarks name a model run with tta=True (edgecut-duo+tta)
_EPS2 = np.float32(1e-12)   # floor of a*b and (1-a)(1-b): alphas of exactly 0 or 1 count as 1e-6 from it


def _logit_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The alpha whose logit is the mean of two alphas' logits: sigmoid((logit a + logit b) / 2),
    which is sqrt(ab) / (sqrt(ab) + sqrt((1-a)(1-b))), computed so (no log, no exp, in place: 0.5 ms
    at 320x320 against 1.2 ms through logits).

    Why logits and not the alphas themselves: where one pass is sure and the other is not, the
    mean of alphas leaves a half-transparent smear, the mean of logits stays nearly as sure as the
    sure pass. Measured with edgecut-duo (int8) on the five bench sets with mirror TTA: the same
    mean IoU either way (0.7411), MAE 0.0806 from logits against 0.0824 from alphas."""
    p = np.multiply(a, b, dtype=np.float32)
    np.maximum(p, _EPS2, out=p)
    q = np.subtract(1.0, a, dtype=np.float32)
    q *= np.subtract(1.0, b, dtype=np.float32)
    np.maximum(q, _EPS2, out=q)
    np.sqrt(p, out=p)
    np.sqrt(q, out=q)
    q += p
    p /= q
    return p


def _locate(model, manifest: Optional[Manifest]):
    from ..models import MODEL_SUFFIXES, resolve

    p = Path(str(model)).expanduser()
    if manifest is not None and p.is_file() and p.suffix.lower() in MODEL_SUFFIXES:
        return p, manifest   # a bare model (e.g. the teacher) described by the caller
    path, found = resolve(model)
    return path, (manifest or found)


def _check(m: Manifest, where) -> None:
    problems = []
    if len(m.input_size) != 2 or min(int(v) for v in m.input_size) < 1:
        problems.append(f"input_size {m.input_size!r} is not [height, width]")
    if len(m.mean) != 3 or len(m.std) != 3 or min(m.std) <= 0:
        problems.append("mean/std need 3 values (std > 0)")
    if m.layout not in ("NCHW", "NHWC"):
        problems.append(f"layout {m.layout!r} is not NCHW or NHWC")
    if m.output_activation not in _ACTIVATIONS:
        problems.append(f"output_activation {m.output_activation!r} is not one of {_ACTIVATIONS}")
    if m.output_norm not in _NORMS:
        problems.append(f"output_norm {m.output_norm!r} is not one of {_NORMS}")
    if problems:
        raise EdgecutError(f"{where}: bad manifest: " + "; ".join(problems))


def _as_pil(photo: PhotoLike) -> Image.Image:
    if isinstance(photo, Image.Image):
        if 0 in photo.size:
            raise EdgecutError(f"empty image ({photo.size[0]}x{photo.size[1]})")
        return photo if photo.mode == "RGB" else photo.convert("RGB")
    arr = np.asarray(photo)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise EdgecutError(f"expected an HxWx3 uint8 array, got {arr.dtype} {arr.shape} "
                           "(edgecut.runtime.load_image converts other images)")
    if 0 in arr.shape:
        raise EdgecutError(f"empty image ({arr.shape[1]}x{arr.shape[0]})")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


class Session:
    """One model, loaded once. Thread-safe for `infer`/`alpha` (onnxruntime runs concurrently).

    `tta=True` also runs the mirror image of every photo and averages the two passes (test-time
    augmentation): twice the inference time for a cleaner matte, since a student's mistakes are
    not mirror-symmetric. Measured on the five bench sets (int8, mean IoU): edgecut-duo 0.7362 ->
    0.7411, edgecut-fast 0.7222 -> 0.7289; portrait_eg 0.9483 -> 0.9519 (bench/results/accuracy-tta.json)."""

    def __init__(self, model: Union[str, os.PathLike] = "default", threads: Optional[int] = None,
                 manifest: Optional[Manifest] = None, upsample: GuidedUpsample = GuidedUpsample(),
                 tta: bool = False):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                    or not 1 <= threads <= MAX_THREADS):
            raise EdgecutError(f"threads must be a whole number from 1 to {MAX_THREADS} (or None: all cores), "
                               f"got {threads!r}")
        self.model_path, self.manifest = _locate(model, manifest)
        _check(self.manifest, self.model_path)
        self.threads = threads
        self.tta = bool(tta)
        self.upsample = upsample
        fmt = "tflite" if self.model_path.suffix.lower() == ".tflite" else self.manifest.format
        self._backend = open_backend(self.model_path, fmt, threads,
                                     input_name=self.manifest.input_name,
                                     output_name=self.manifest.output_name)
        h, w = (int(v) for v in self.manifest.input_size)
        self.input_hw = (h, w)
        shape = self._backend.input_shape
        spatial = tuple(shape[1:3] if self.manifest.layout == "NHWC" else shape[2:4]) if len(shape) == 4 else ()
        if spatial and all(isinstance(v, int) for v in spatial) and spatial != (h, w):
            raise EdgecutError(f"{self.model_path}: model input is {spatial[0]}x{spatial[1]} but the "
                               f"manifest says input_size {h}x{w} ({self.manifest.layout})")
        channels = (shape[3] if self.manifest.layout == "NHWC" else shape[1]) if len(shape) == 4 else 3
        if isinstance(channels, int) and channels != 3:
            raise EdgecutError(f"{self.model_path}: model input has {channels} channel(s); edgecut feeds it "
                               f"RGB (3, {self.manifest.layout})")
        self._mean = np.asarray(self.manifest.mean, dtype=np.float32) * 255.0
        self._scale = 1.0 / (np.asarray(self.manifest.std, dtype=np.float32) * 255.0)

    def __repr__(self) -> str:
        tta = ", tta=True" if self.tta else ""
        return f"Session({self.manifest.name or self.model_path.name!r}, input={self.input_hw}{tta})"

    def preprocess(self, photo: PhotoLike) -> np.ndarray:
        """Stretch to the model's input size (no letterbox) and normalise, as the model was trained."""
        h, w = self.input_hw
        small = photo if isinstance(photo, np.ndarray) and photo.shape == (h, w, 3) and photo.dtype == np.uint8 \
            else np.asarray(_as_pil(photo).resize((w, h), Image.BILINEAR, reducing_gap=2.0))   # H,W,3 uint8
        # (an array already at the input size skips Pillow: its resize to the same size is a copy)
        # Written straight into the model's layout by two ufuncs: converting to float first and
        # transposing after (the obvious way) took 600 us of a 3 ms inference at 192x192 (measured),
        # while this reads the interleaved uint8 once. Same float32 arithmetic, same bits.
        if self.manifest.layout == "NHWC":
            x, u8, mean, scale = np.empty((1, h, w, 3), np.float32), small, self._mean, self._scale
        else:
            x, u8 = np.empty((1, 3, h, w), np.float32), small.transpose(2, 0, 1)
            mean, scale = self._mean[:, None, None], self._scale[:, None, None]
        np.subtract(u8, mean, out=x[0], dtype=np.float32)
        x[0] *= scale
        return x

    def postprocess(self, y: np.ndarray) -> np.ndarray:
        y = np.squeeze(np.asarray(y, dtype=np.float32))
        if y.ndim != 2:
            raise EdgecutError(f"{self.model_path}: output shape {y.shape} is not a single alpha map")
        if self.manifest.output_activation == "sigmoid":
            y = 0.5 * (1.0 + np.tanh(0.5 * y))   # sigmoid without exp overflow
        if self.manifest.output_norm == "minmax":
            lo, hi = float(y.min()), float(y.max())
            y = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
        return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)

    def infer(self, rgb: PhotoLike) -> np.ndarray:
        """Alpha in [0, 1], float32, at the model's output resolution (normally its input size)."""
        x = self.preprocess(rgb)
        a = self.postprocess(self._backend.run(x))
        if not self.tta:
            return a
        # the mirrored input, mirrored from the normalised one: the same pixels as preprocessing the
        # mirrored photo, without resizing it again
        mirrored = np.ascontiguousarray(x[:, :, ::-1, :] if self.manifest.layout == "NHWC" else x[..., ::-1])
        return _logit_mean(a, self.postprocess(self._backend.run(mirrored))[:, ::-1])

    def alpha(self, rgb: PhotoLike, refine: bool = True) -> np.ndarray:
        """uint8 alpha (H, W) at the photo's full resolution, edge-snapped unless refine=False."""
        photo = _as_pil(rgb)
        return upsample_alpha(self.infer(photo), photo, refine, self.upsample)


def new_session(model: Union[str, os.PathLike] = "default", **kw) -> Session:
    """rembg-style constructor: `new_session("default", threads=2)`."""
    return Session(model, **kw)
