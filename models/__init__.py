"""The registry of models shipped inside the package, and how a `--model` argument finds its file.

Models are data, not code: each lives in `embedded/<name>/` as a model file plus the
`manifest.json` that says how to feed it, so shipping a new model never touches the runtime.
This module must stay importable without torch (the lean runtime imports it); torch modules
that build or train models live in their own modules beside it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

from ..runtime.errors import EdgecutError
from ..runtime.manifest import Manifest

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
MODEL_SUFFIXES = (".onnx", ".ort", ".tflite")

__all__ = [
    "EMBEDDED_DIR", "DEFAULT_MODEL", "Manifest", "embedded_dir", "list_models",
    "default_model", "resolve",
]


def embedded_dir() -> Path:
    """Where embedded models live; EDGECUT_MODELS_DIR swaps in another zoo (tests, private models)."""
    return Path(os.environ.get("EDGECUT_MODELS_DIR") or EMBEDDED_DIR)


def _load_manifest(path: Path) -> Manifest:
    try:
        return Manifest.load(path)
    except OSError as e:
        raise EdgecutError(f"{path}: unreadable manifest ({e.strerror or e})") from None


def _embedded() -> dict:
    """name -> model folder, for every folder that has a manifest (the folder name is the key)."""
    root = embedded_dir()
    if not root.is_dir():
        return {}
    # dot-folders are an embed in progress or the model it replaces (export.embed, replace_folder)
    return {d.name: d for d in sorted(root.iterdir())
            if not d.name.startswith(".") and (d / "manifest.json").is_file()}


def list_models(problems: Optional[List[str]] = None) -> List[Manifest]:
    """Manifests of the embedded models, sorted by name (name = the folder name). With a
    `problems` list, a model whose manifest does not load is reported there and left out, so one
    broken folder in a private zoo does not hide the others; without one, it raises."""
    out = []
    for name, folder in _embedded().items():
        try:
            m = _load_manifest(folder / "manifest.json")
        except EdgecutError as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        m.name = name
        out.append(m)
    return out


def default_model() -> Optional[str]:
    """The `embedded/DEFAULT` file names the default; without one, the first model by name."""
    names = list(_embedded())
    marker = embedded_dir() / "DEFAULT"
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip()
        if name not in names:
            # Falling back to another model would cut photos out with a model nobody chose.
            raise EdgecutError(f"{marker}: names {name!r}, which is not an embedded model "
                               f"(available: {', '.join(names) or 'none'})")
        return name
    return names[0] if names else None


def __getattr__(name):
    # Computed on access: the lead drops the trained model in after this module is imported.
    if name == "DEFAULT_MODEL":
        return default_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _beside(model_file: Path) -> Optional[Path]:
    for cand in (model_file.with_suffix(".json"), model_file.parent / "manifest.json"):
        if cand.is_file():
            return cand
    return None


def _checked(model_file: Path, manifest: Manifest, where) -> Tuple[Path, Manifest]:
    if not model_file.is_file():
        raise EdgecutError(f"{where}: model file {model_file} not found")
    return model_file, manifest


def _embedded_model(name: str, folder: Path) -> Tuple[Path, Manifest]:
    m = _load_manifest(folder / "manifest.json")
    m.name = name
    return _checked(folder / m.file, m, folder / "manifest.json")


def resolve(model: Union[str, os.PathLike] = "default") -> Tuple[Path, Manifest]:
    """Find (model file, manifest) for a name, a model folder, a manifest .json or a model file.

    Names win over paths so that `--model default` never picks up a stray folder called `default`;
    a short name (`fast` for `edgecut-fast`) is tried last, so a real path of that name still wins.
    """
    key = str(model)
    embedded = _embedded()
    if key == "default":
        name = default_model()
        if name is None:
            raise EdgecutError(
                f"no embedded model in {embedded_dir()}; pass --model PATH (an .onnx with its manifest)")
        key = name
    if key in embedded:
        return _embedded_model(key, embedded[key])

    p = Path(model).expanduser()
    if p.is_dir() and (p / "manifest.json").is_file():
        m = _load_manifest(p / "manifest.json")
        return _checked(p / m.file, m, p / "manifest.json")
    if p.is_file() and p.suffix.lower() == ".json":
        m = _load_manifest(p)
        return _checked(p.parent / m.file, m, p)
    if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES:
        mpath = _beside(p)
        if mpath is None:
            raise EdgecutError(
                f"{p}: no manifest beside the model (looked for {p.with_suffix('.json').name} "
                "and manifest.json)")
        m = _load_manifest(mpath)
        if p.suffix.lower() == ".tflite":
            m.format = "tflite"
        return p, m
    if f"edgecut-{key}" in embedded:
        return _embedded_model(f"edgecut-{key}", embedded[f"edgecut-{key}"])
    if p.is_file():      # a photo or a checkpoint given as --model: "unknown model" would mislead
        raise EdgecutError(f"{p}: not a model (expected an .onnx or .tflite file with its manifest, "
                           "a manifest .json or a model folder)")
    if p.is_dir():
        raise EdgecutError(f"{p}: a folder without manifest.json, so not a model folder")
    names = ", ".join(embedded) or "none"
    raise EdgecutError(
        f"unknown model {key!r}: not an embedded model (available: {names}) "
        "and not a model file, manifest or model folder")
