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
    if ck.get("ensemble") is not None and not (isinstance(ck["ensemble"], list)
                                               and all(isinstance(m, dict) for m in ck["ensemble"])):
        raise EdgecutError(f"{path}: not an edgecut checkpoint (its ensemble is not a list of members)")
    check_checkpoint_size(ck, path)
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


def _bad_run_field(value, kind: str) -> str:
    """Why a config.json/split.json field is unusable ('' when it is fine)."""
    if kind == "path":
        return "" if isinstance(value, str) and value else "not a folder path"
    if kind == "names":
        ok = value is None or (isinstance(value, list) and all(isinstance(s, str) for s in value))
        return "" if ok else "not a list of names"
    if kind == "fraction":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        return "" if ok else "not a fraction in [0, 1)"
    if kind == "count":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return "" if ok else "not a count"
    raise AssertionError(kind)


# The fields of a distill run's files that the compression verbs read, and what each must be.
RUN_FIELDS = {
    "config.json": {"data": "path", "sets": "names", "label_roots": "names", "exclude": "names",
                    "holdout": "fraction"},
    "split.json": {"sets": "names", "holdout": "names", "train": "count"},
}


def read_run_json(path):
    """A run folder's config.json or split.json as a dict (None when the file is not there). Text that
    is not JSON, JSON that is not an object, or a field of the wrong type is one line naming the file:
    "RUN/split.json: not valid JSON (...)" / "RUN/config.json: bad run config (...)"."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgecutError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:   # json.JSONDecodeError is a ValueError
        raise EdgecutError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise EdgecutError(f"{path}: bad run config (holds a {type(data).__name__}, not an object)")
    for key, kind in RUN_FIELDS.get(path.name, {}).items():
        why = _bad_run_field(data[key], kind) if key in data else ""
        if why:
            raise EdgecutError(f"{path}: bad run config ({key} is {data[key]!r:.40}: {why})")
    return data


def check_checkpoint_size(ck: dict, path) -> None:
    """The input_size a checkpoint (or each ensemble member) records, checked as --input-size is:
    0/None (the variant's), or a positive multiple of 32 up to the cap; anything else is one line."""
    from .commands import check_input_size

    sizes = [ck.get("input_size")] + [m.get("input_size") if isinstance(m, dict) else "?"
                                      for m in (ck.get("ensemble") or [])]
    for v in sizes:
        if v is None:
            continue
        where = f"{path}: input_size {v!r:.40} in the checkpoint"
        if not isinstance(v, int) or isinstance(v, bool):
            raise EdgecutError(f"{where}: use a positive multiple of 32")
        check_input_size(v if v else 0, where)
