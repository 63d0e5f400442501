"""Teachers are data, not code: one Manifest per known teacher, so the runtime's single generic
Session runs IS-Net, U2-Net or BiRefNet exactly as their authors preprocess them.

Numbers come from the upstream sources: img.ly's background-removal-js (`tensorHWCtoBCHW`,
mean 128 / std 256 on 0..255 values, input "input", output "output" already in [0,1]) and rembg's
sessions (`rembg/sessions/*.py`: ImageNet mean/std at 320 px for u2net/u2netp/silueta, mean
ImageNet / std 1.0 at 1024 px for isnet-general-use, sigmoid for BiRefNet, then min-max of the
first output). rembg also divides each photo by its own max pixel value before normalising; we
do not (for any photo with a pure white pixel it is the same thing).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..runtime.errors import EdgecutError
from ..runtime.manifest import Manifest

IMGLY_PACKAGE = "@imgly/background-removal-data@1.4.5"
IMGLY_VARIANTS = {"medium": "fp16", "small": "int8"}   # variant -> precision of the weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHER_PREFIX = "teacher:"


def _isnet_imgly(variant: str) -> Manifest:
    return Manifest(
        name=f"isnet-imgly-{variant}",
        precision=IMGLY_VARIANTS[variant],
        input_size=(1024, 1024),
        mean=(128 / 255,) * 3,
        std=(256 / 255,) * 3,
        input_name="input",
        output_name="output",
        architecture="IS-Net (DIS), img.ly export",
        teacher="isnet-imgly",
        data="img.ly training data (undisclosed)",
        license="AGPL-3.0",
        notes=f"From the npm package {IMGLY_PACKAGE} (resources /models/{variant}).",
        extra={"source": IMGLY_PACKAGE, "variant": variant},
    )


def _rembg(name: str, size: int, mean, std, activation: str, arch: str, file: str) -> Manifest:
    return Manifest(
        name=name,
        file=file,
        input_size=(size, size),
        mean=tuple(mean),
        std=tuple(std),
        output_activation=activation,
        output_norm="minmax",
        architecture=arch,
        teacher=name,
        license="see upstream (rembg model release; original model's licence)",
        notes="rembg-compatible ONNX file supplied by the user.",
        extra={"source": "rembg", "rembg_file": file},
    )


# spec name -> factory; factories so that every caller gets its own mutable Manifest.
_SPECS = {
    "isnet-imgly": lambda: _isnet_imgly("medium"),
    "isnet-imgly-medium": lambda: _isnet_imgly("medium"),
    "isnet-imgly-small": lambda: _isnet_imgly("small"),
    "u2net": lambda: _rembg("u2net", 320, IMAGENET_MEAN, IMAGENET_STD, "none", "U2-Net", "u2net.onnx"),
    "u2netp": lambda: _rembg("u2netp", 320, IMAGENET_MEAN, IMAGENET_STD, "none", "U2-Net-p", "u2netp.onnx"),
    "silueta": lambda: _rembg("silueta", 320, IMAGENET_MEAN, IMAGENET_STD, "none", "U2-Net (silueta)", "silueta.onnx"),
    "isnet-general-use": lambda: _rembg(
        "isnet-general-use", 1024, IMAGENET_MEAN, (1.0, 1.0, 1.0), "none", "IS-Net (DIS)", "isnet-general-use.onnx"),
    "birefnet": lambda: _rembg(
        "birefnet", 1024, IMAGENET_MEAN, IMAGENET_STD, "sigmoid", "BiRefNet", "birefnet-general.onnx"),
}
TEACHER_SPECS = tuple(_SPECS)


def teacher_manifest(spec_name: str) -> Manifest:
    try:
        return _SPECS[spec_name]()
    except KeyError:
        raise EdgecutError(f"unknown teacher {spec_name!r}; known: {', '.join(TEACHER_SPECS)}") from None


def cache_root() -> Path:
    """$EDGECUT_CACHE, else ~/.cache/edgecut: models are downloaded once per machine, not per repo."""
    env = os.environ.get("EDGECUT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgecut"


def imgly_dir(variant: str = "medium", cache: Optional[os.PathLike] = None) -> Path:
    base = Path(cache).expanduser() if cache else cache_root() / "teachers"
    return base / f"isnet-imgly-{variant}"


def rembg_home() -> Path:
    """Where rembg keeps its models, so `--teacher u2net` finds a user's existing download."""
    env = os.environ.get("U2NET_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME", "~")).expanduser() / ".u2net"


@dataclass
class Teacher:
    """A teacher ready for the runtime: `Session(t.model_path, manifest=t.manifest)`."""
    model_path: Path
    manifest: Manifest

    def session(self, threads: Optional[int] = None, tta: bool = False):
        from ..runtime.session import Session

        return Session(str(self.model_path), threads=threads, manifest=self.manifest, tta=tta)


def _model_in_dir(d: Path, manifest: Optional[Manifest]) -> Path:
    if manifest is not None and (d / manifest.file).is_file():
        return d / manifest.file
    onnx = sorted(d.glob("*.onnx"))
    if len(onnx) != 1:
        raise EdgecutError(f"{d}: expected one .onnx model in the folder, found {len(onnx)}")
    return onnx[0]


def _from_path(path: Path, spec: Optional[str]) -> Teacher:
    """A path is a model file or its folder; its manifest is the spec's if one is named, else the
    manifest.json beside it."""
    path = path.expanduser()
    if not path.exists():
        raise EdgecutError(f"{path}: no such teacher model")
    from ..models import MODEL_SUFFIXES

    folder = path if path.is_dir() else path.parent
    suffix = path.suffix.lower() if path.is_file() else ""
    if suffix and suffix not in (*MODEL_SUFFIXES, ".json"):   # a photo: naming a SPEC for it would not help
        raise EdgecutError(f"{path}: not a model (expected an .onnx or .tflite file with its manifest, "
                           "a manifest .json or a model folder)")
    if spec:
        manifest = teacher_manifest(spec)
    elif suffix == ".json":   # a manifest by another name, as `--model` takes one
        manifest = Manifest.load(path)
        if not (folder / manifest.file).is_file():
            raise EdgecutError(f"{path}: its model file {folder / manifest.file} not found")
        path = folder / manifest.file
    elif (folder / "manifest.json").is_file():
        manifest = Manifest.load(folder / "manifest.json")
    else:
        raise EdgecutError(f"{path}: no manifest.json beside it; name its kind with --teacher SPEC "
                           f"--teacher-path {path} (SPEC one of {', '.join(TEACHER_SPECS)})")
    model = _model_in_dir(folder, manifest) if path.is_dir() else path
    manifest = dataclasses.replace(manifest, file=model.name)
    return Teacher(model, manifest)


def resolve_teacher(teacher: str, path: Optional[str] = None) -> Teacher:
    """`isnet-imgly` -> the fetched copy in the cache; `u2net --teacher-path F` -> a user's rembg
    file (default: rembg's own folder); `/some/dir` or `/some/model.onnx` -> its manifest.json."""
    if teacher.startswith(TEACHER_PREFIX):
        teacher = teacher[len(TEACHER_PREFIX):]
    if not teacher.strip():   # Path("") is ".", which read as a model folder without a manifest
        raise EdgecutError(f"no teacher named; give a spec name ({', '.join(TEACHER_SPECS)}), "
                           f"a model folder or an .onnx file")
    if teacher not in _SPECS:
        if path:
            raise EdgecutError(f"--teacher-path needs a teacher spec name, got {teacher!r}")
        return _from_path(Path(teacher), None)
    if path:
        return _from_path(Path(path), teacher)
    if teacher.startswith("isnet-imgly"):
        variant = "small" if teacher.endswith("small") else "medium"
        d = imgly_dir(variant)
        if not (d / "model.onnx").is_file():
            raise EdgecutError(f"teacher {teacher} is not in {d}; run `edgecut fetch-teacher "
                               f"--variant {variant}` first")
        return _from_path(d, None)
    default = rembg_home() / teacher_manifest(teacher).file
    if not default.is_file():
        raise EdgecutError(f"teacher {teacher}: {default} not found; pass --teacher-path to the .onnx file")
    return _from_path(default, teacher)


def split_tta(spec: str) -> tuple:
    """`edgecut-duo+tta` -> ('edgecut-duo', True): a benchmark names a model with mirror test-time
    augmentation (Session(tta=True)) by this suffix, so one run can time and score a model with and
    without it side by side."""
    from ..runtime.session import TTA_SUFFIX

    return (spec[:-len(TTA_SUFFIX)], True) if spec.endswith(TTA_SUFFIX) else (spec, False)


def open_model(spec: str, teacher_path: Optional[str] = None, threads: Optional[int] = None):
    """A `--model` value as the benchmarks take it: `teacher:SPEC` (with --teacher-path) is a
    teacher, `peer:NAME` a fetched peer (bench/peers.py), anything else (embedded name, model file
    or folder) goes to the runtime as is; any of them ending in `+tta` runs with mirror test-time
    augmentation."""
    from ..bench.peers import PEER_PREFIX, resolve_peer
    from ..runtime.session import Session

    spec, tta = split_tta(spec)
    if spec.startswith(TEACHER_PREFIX):
        return resolve_teacher(spec, teacher_path).session(threads, tta)
    if spec.startswith(PEER_PREFIX):
        return Session(str(resolve_peer(spec)), threads=threads, tta=tta)
    return Session(spec, threads=threads, tta=tta)
