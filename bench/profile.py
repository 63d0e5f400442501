"""Where a photo's time goes: `edgecut bench latency --profile`.

The end-to-end table says how long a 12 MP photo takes; on a Raspberry Pi the question is which
stage to attack (a smaller model only helps if inference dominates; on large photos decode,
upsampling and encode often do). Each stage is timed exactly as `edgecut remove` runs it:
    decode     load_image: JPEG decode, EXIF orientation, 8-bit RGB
    resize     Session.preprocess: stretch to the model's input, normalise
    inference  the model (onnxruntime / LiteRT) and its output activation
    upsample   low-res alpha -> full-res matte (guided filter on large photos)
    composite  the RGBA cutout (to_rgba)
    encode     PNG at the CLI's compression level, into memory (no disk in the number)
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

STAGES = ("decode", "resize", "inference", "upsample", "composite", "encode")


def profile_once(session, photo: Path) -> Dict[str, float]:
    """One pass through the stages; seconds per stage."""
    from ..runtime.commands import PNG_LEVEL
    from ..runtime.composite import to_rgba
    from ..runtime.imageio import load_image
    from ..runtime.upsample import upsample_alpha

    t = [time.perf_counter()]
    rgb = load_image(photo)
    t.append(time.perf_counter())
    x = session.preprocess(rgb)
    t.append(time.perf_counter())
    low = session.postprocess(session._backend.run(x))   # Session.infer without its preprocess
    t.append(time.perf_counter())
    alpha = upsample_alpha(low, rgb, True, session.upsample)
    t.append(time.perf_counter())
    rgba = to_rgba(rgb, alpha)
    t.append(time.perf_counter())
    rgba.save(io.BytesIO(), "PNG", compress_level=PNG_LEVEL)
    t.append(time.perf_counter())
    return dict(zip(STAGES, np.diff(t)))


def profile_stages(session, photo: Path, runs: int = 3) -> dict:
    """Median milliseconds per stage over `runs` passes (after one warm-up), plus their total."""
    profile_once(session, photo)
    passes = [profile_once(session, photo) for _ in range(max(1, runs))]
    out = {f"{s}_ms": float(np.median([p[s] for p in passes])) * 1000.0 for s in STAGES}
    out["total_ms"] = sum(out[f"{s}_ms"] for s in STAGES)
    out["runs"] = len(passes)
    return out


def profile_table(results: List[dict]) -> str:
    """One row per model: ms per stage and each stage's share of the total."""
    from .report import table

    rows = []
    for r in results:
        p = r.get("profile")
        if not p:
            continue
        total = p["total_ms"] or 1.0
        cells = [f"{p[f'{s}_ms']:.1f} ({100 * p[f'{s}_ms'] / total:.0f}%)" for s in STAGES]
        rows.append([r["name"], r["end_to_end"]["megapixels"], r["end_to_end"]["threads"], *cells,
                     f"{p['total_ms']:.1f}"])
    headers = ["Model", "MP", "Threads", *(f"{s.capitalize()}(ms)" for s in STAGES), "Total(ms)"]
    return table(headers, rows, title="Per-stage split of one photo (median ms, share of total)")
