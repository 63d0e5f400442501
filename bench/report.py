"""What every benchmark run records besides its numbers: when, how it was called, on what machine,
with which exact model files, so a JSON result can be compared with another months later."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..runtime.cpu import cpuinfo_field, int8_dot
from ..runtime.imageio import write_text_atomic
from ..runtime.manifest import sha256_of
from ..runtime.session import TTA_SUFFIX


def now_stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_json_path(kind: str) -> Path:
    """runs/ is git-ignored: results stay local unless someone chooses to publish them."""
    return Path("runs") / "bench" / f"{kind}-{now_stamp()}.json"


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_line(info: dict) -> str:
    """One line for the printed tables: the figures below it were measured on this."""
    return f"Machine: {info['cpu']}, {info['cores']} cores, int8 dot product: {info['int8_dot']}"


def machine_info() -> dict:
    import numpy
    import onnxruntime
    import PIL

    from .. import __version__

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "int8_dot": int8_dot(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "edgecut": __version__,
    }


def header(kind: str, args=None) -> dict:
    """`command` is the process's own command line; `options` the parsed options (the same when
    run from a shell, and still right when called as `cli.main([...])`)."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in (vars(args) if args is not None else {}).items()
               if not callable(v)}
    return {
        "kind": kind,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name] + sys.argv[1:]),
        "options": options,
        "machine": machine_info(),
    }


def model_info(spec: str, session) -> dict:
    m, path = session.manifest, Path(session.model_path)
    return {
        "spec": spec,
        "name": m.name + (TTA_SUFFIX if session.tta else ""),
        "tta": session.tta,
        "path": str(path),
        "sha256": m.sha256 or sha256_of(path),
        "precision": m.precision,
        "format": m.format,
        "input_size": list(m.input_size),
        "file_bytes": path.stat().st_size,
    }


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def write_results(path: Path, payload: dict, printed: str) -> Path:
    """The JSON and, beside it as .txt, the table the command printed: the plain log that a reviewer
    diffs between runs (and the README quotes), so nobody copies it from a terminal by hand."""
    out = write_json(path, payload)
    write_text_atomic(out.with_suffix(".txt"), printed.rstrip("\n") + "\n")
    return out


def table(headers: Sequence[str], rows: List[Sequence], text_cols: int = 1, title: Optional[str] = None) -> str:
    """Plain aligned columns: the first `text_cols` left, numbers right (as Ultralytics prints)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(vals):
        return "  ".join(v.ljust(w) if i < text_cols else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)
