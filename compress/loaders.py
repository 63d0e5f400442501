"""Reading the files the compression verbs are given, with one-line errors for the bad ones.

A checkpoint or model file that is missing, a folder, truncated, some other file under the right
name, or a checkpoint of another architecture is a user's mistake, so it is an EdgecutError that
names the file and says why, not a traceback from pickle, protobuf or `load_state_dict`.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..runtime.errors import EdgecutError


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(path) -> dict:
    """A checkpoint dict from `edgecut distill`, `compress prune|qat|soup|ensemble|recover`."""
    import torch

    path = Path(path)
    if not path.exists():
        raise EdgecutError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise EdgecutError(f"{path}: is a folder, not a checkpoint file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except OSError as e:
        raise EdgecutError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:   # pickle, zip and torch raise anything for a file that is not theirs
        raise EdgecutError(f"{path}: not an edgecut checkpoint ({_first_line(e)})") from None
    if not isinstance(ck, dict):
        raise EdgecutError(f"{path}: not an edgecut checkpoint (holds a {type(ck).__name__}, not a dict)")
    if not isinstance(ck.get("variant"), str) or not (isinstance(ck.get("model"), dict) or ck.get("ensemble")):
        raise EdgecutError(f"{path}: not an edgecut checkpoint (no model weights or variant)")
    return ck


_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                       r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def mismatch_reason(e: Exception) -> str:
    """The first fact of a `load_state_dict` failure, short: one tensor's two shapes, or a key."""
    text = str(e)
    m = _MISMATCH.search(text)
    if m:
        return f"{m.group(1)} is {m.group(2)} there, {m.group(3)} here"
    for kind in ("Missing key(s)", "Unexpected key(s)"):
        at = text.find(kind)
        if at >= 0:
            return text[at:].split(",")[0].strip().rstrip(".")[:120]
    return _first_line(e)


def student_from(ck: dict, path, variant=None, hint: str = ""):
    """`export.student_from_checkpoint`, with a checkpoint of another variant or shape (or naming a
    variant this version does not know) as one line naming `path`."""
    from .export import student_from_checkpoint

    try:
        return student_from_checkpoint(ck, variant)
    except KeyError as e:   # get_variant: an unknown variant name
        raise EdgecutError(f"{path}: {e.args[0] if e.args else e}") from None
    except (RuntimeError, ValueError, IndexError) as e:   # load_state_dict, rebuild_pruned
        raise EdgecutError(f"{path}: checkpoint is for another variant/shape ({mismatch_reason(e)})"
                           + (f"; {hint}" if hint else "")) from None


def check_onnx(path) -> None:
    """Refuse a file that is not an ONNX model (a text file named model.onnx) before a rewrite
    parses it somewhere deep in onnx's tools."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgecutError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise
    except OSError as e:
        raise EdgecutError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:   # google.protobuf.message.DecodeError and friends
        raise EdgecutError(f"{path}: not an ONNX model ({_first_line(e)})") from None
    if not len(model.graph.node):
        raise EdgecutError(f"{path}: not an ONNX model (no graph in it)")


def check_name(name: str, flag: str = "--name") -> str:
    """A model name that is one folder name: never empty, '.', '..' or a path out of --out."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise EdgecutError(f"{flag} {name!r}: a model name is one folder name (no '/', '..' or blank)")
    return name
