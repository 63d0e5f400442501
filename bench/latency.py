"""How fast and how heavy: model facts, inference latency per thread count, and the 12 MP path
a user actually waits for (decode, matte, encode), plus the CLI's peak memory.

Latency is the median/p90 of `Session.infer` on a photo already at the model's resolution, so it
is the network plus normalisation (no resize, no upsampling); the end-to-end split shows where
the rest of a real photo's time goes. Peak RSS is measured on a separate `edgecut remove`
process, the number that decides whether a phone or a small VM can run it.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..runtime.errors import EdgecutError

SLOW_RUN_S = 0.5        # a model whose warm-up run is slower than this gets few timed runs
SLOW_RUNS = 3
PHOTO_12MP = (4000, 3000)


@dataclass
class LatencyConfig:
    threads: Sequence[int] = (1, 2)
    runs: int = 20                            # at least this many timed runs ...
    min_seconds: float = 1.0                  # ... and at least this long (a fast model: hundreds)
    warmup: int = 2
    photo: Optional[Path] = None             # None: synthesise one of photo_size
    photo_size: Tuple[int, int] = PHOTO_12MP  # (width, height)
    teacher_path: Optional[str] = None
    measure_rss: bool = True
    profile: bool = False                     # also split one photo's time by stage (bench/profile.py)
    end_to_end: bool = True                   # False: inference timings only (bench report)


# --- model facts ---------------------------------------------------------------------------------
def count_params(model_path: Path) -> Optional[int]:
    """Sum of initializer sizes; None when onnx is not installed or the file is not ONNX."""
    if Path(model_path).suffix.lower() != ".onnx":
        return None
    try:
        import onnx
    except ImportError:
        return None
    m = onnx.load(str(model_path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))


# --- timing ----------------------------------------------------------------------------------------
def percentiles(times_s: Sequence[float]) -> dict:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "runs": int(ms.size)}


MAX_RUNS = 2000


def time_infer(session, runs: int, warmup: int, min_seconds: float = 0.0) -> dict:
    """p50/p90 of `Session.infer` over at least `runs` timed runs spanning at least `min_seconds`.

    Why a time floor: 20 runs of a 10 ms model span a fifth of a second, and on a shared machine one
    slow fifth of a second moved the default's p50 from 9.7 to 12.6 ms between runs of the same file;
    a second of runs (100 here) is a sample of the minute, not of the instant."""
    h, w = session.manifest.input_size
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    t = time.perf_counter()
    session.infer(rgb)                       # warm-up: allocations, thread pool start
    if time.perf_counter() - t > SLOW_RUN_S:
        runs, min_seconds = min(runs, SLOW_RUNS), 0.0   # a teacher: one warm-up and a few runs say enough
    else:
        for _ in range(warmup - 1):
            session.infer(rgb)
    times = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < min_seconds and len(times) < MAX_RUNS):
        t = time.perf_counter()
        session.infer(rgb)
        times.append(time.perf_counter() - t)
    return percentiles(times)


def synth_photo(size: Tuple[int, int], path: Path) -> Path:
    """A JPEG that compresses like a photo (smooth light, a subject, sensor-like noise), so decode
    and encode times are realistic; flat colour would make both unrealistically fast."""
    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = 90 + 80 * (xx / w)[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
    subject = ((xx - w / 2) / (0.22 * w)) ** 2 + ((yy - 0.6 * h) / (0.38 * h)) ** 2 < 1
    img = np.where(subject[..., None], np.array([200, 120, 90], np.float32), bg)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def time_end_to_end(session, photo: Path, runs: int, warmup: int = 1) -> dict:
    """Median of each stage over `runs` passes, done as `edgecut remove` does them: decode,
    photo -> RGBA cutout (resize, inference, edge-aware upsampling, alpha assembly), PNG encode.

    `warmup` untimed passes first, as for inference: the first 12 MP photo of a process also pays
    for ~100 MB of fresh memory pages (measured: ~30 ms more), which later photos of a folder or
    video reuse. Each pass drops its images before the next, as the CLI does."""
    from ..runtime.commands import PNG_LEVEL
    from ..runtime.composite import to_rgba
    from ..runtime.imageio import load_image

    stages = {"decode_ms": [], "rgba_ms": [], "encode_ms": []}
    megapixels = 0.0
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        rgb = load_image(photo)
        t1 = time.perf_counter()
        rgba = to_rgba(rgb, session.alpha(rgb))
        t2 = time.perf_counter()
        rgba.save(io.BytesIO(), "PNG", compress_level=PNG_LEVEL)
        t3 = time.perf_counter()
        megapixels = round(rgb.width * rgb.height / 1e6, 2)
        del rgb, rgba
        if i >= warmup:
            for k, d in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                stages[k].append(d * 1000.0)
    out = {k: float(np.median(v)) for k, v in stages.items()}
    out["total_ms"] = sum(out.values())
    out["megapixels"] = megapixels
    out["warmup"] = warmup
    return out


# Linux starts a forked child's peak RSS at its parent's size, and a benchmark process holding a
# teacher or 12 MP arrays is large: so a small launcher (a bare interpreter, ~10 MB) forks the
# CLI and reports that child's own peak.
_RSS_LAUNCHER = ("import resource, subprocess, sys\n"
                 "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
                 "sys.stderr.write(r.stderr.decode(errors='replace'))\n"
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                 "sys.exit(r.returncode)\n")


def peak_rss_mb(model_arg: str, photo: Path, tta: bool = False) -> Optional[float]:
    """Peak RSS of one `edgecut remove` run on `photo`, in MB."""
    with tempfile.TemporaryDirectory(prefix="edgecut-rss-") as tmp:
        cmd = [sys.executable, "-m", "edgecut.cli", "remove", str(photo),
               "-o", str(Path(tmp) / "out.png"), "--model", model_arg] + (["--tta"] if tta else [])
        r = subprocess.run([sys.executable, "-S", "-c", _RSS_LAUNCHER, *cmd], capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise EdgecutError(f"edgecut remove failed while measuring memory: {last}")
    kb = int(r.stdout.split()[-1])
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


def cli_model_arg(spec: str, session) -> Optional[str]:
    """What `edgecut remove --model` accepts for this model: anything but a teacher or peer spec,
    or the folder of one that carries its own manifest (a fetched peer always does)."""
    from ..compress.teachers import TEACHER_PREFIX, split_tta
    from .peers import PEER_PREFIX

    spec, _ = split_tta(spec)
    if not spec.startswith((TEACHER_PREFIX, PEER_PREFIX)):
        return spec
    folder = Path(session.model_path).parent
    return str(folder) if (folder / "manifest.json").is_file() else None


# --- one model, all models -----------------------------------------------------------------------
def bench_model(spec: str, cfg: LatencyConfig, photo: Path) -> dict:
    from ..compress.teachers import open_model
    from .report import model_info

    t = time.perf_counter()
    session = open_model(spec, cfg.teacher_path, cfg.threads[0])
    load_ms = (time.perf_counter() - t) * 1000.0
    info = model_info(spec, session)
    m = session.manifest
    out = {**info, "params": m.params or count_params(Path(session.model_path)), "macs": m.macs,
           "load_ms": load_ms, "latency": {}}
    for i, n in enumerate(cfg.threads):
        if i > 0:
            session = open_model(spec, cfg.teacher_path, n)
        out["latency"][str(n)] = time_infer(session, cfg.runs, cfg.warmup, cfg.min_seconds)
    if not cfg.end_to_end:
        return out
    slow = out["latency"][str(cfg.threads[-1])]["p50_ms"] > SLOW_RUN_S * 1000
    out["end_to_end"] = time_end_to_end(session, photo, 1 if slow else min(3, cfg.runs), 0 if slow else 1)
    out["end_to_end"]["threads"] = cfg.threads[-1]
    if cfg.profile:
        from .profile import profile_stages
        out["profile"] = profile_stages(session, photo, 1 if slow else min(3, cfg.runs))
    arg = cli_model_arg(spec, session)
    out["peak_rss_mb"] = peak_rss_mb(arg, photo, session.tta) if cfg.measure_rss and arg else None
    return out


def run_latency(models: Sequence[str], cfg: LatencyConfig) -> Tuple[List[dict], dict]:
    with tempfile.TemporaryDirectory(prefix="edgecut-lat-") as tmp:
        if cfg.photo:
            photo = Path(cfg.photo)
            if not photo.is_file():
                raise EdgecutError(f"{photo}: " + ("is a directory, not a photo" if photo.is_dir() else
                                                   "not a regular file (a device or pipe)" if photo.exists() else
                                                   "no such photo"))
            photo_info = {"path": str(photo), "synthetic": False}
        else:
            photo = synth_photo(cfg.photo_size, Path(tmp) / "synthetic.jpg")
            photo_info = {"synthetic": True, "size": list(cfg.photo_size)}
        results = [bench_model(spec, cfg, photo) for spec in models]
    return results, photo_info


def _mb(b) -> str:
    return "-" if b is None else f"{b / 1e6:.2f}"


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def results_tables(results: List[dict]) -> str:
    from .report import table

    rows = []
    for r in results:
        for n, lat in r["latency"].items():
            rows.append([r["name"], r["format"], r["precision"], _mb(r["file_bytes"]),
                         "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}",
                         "-" if r["macs"] is None else f"{r['macs'] / 1e9:.2f}",
                         _ms(r["load_ms"]), n, _ms(lat["p50_ms"]), _ms(lat["p90_ms"]), lat["runs"]])
    first = table(["Model", "Format", "Prec", "Size(MB)", "Params(M)", "GMACs", "Load(ms)",
                   "Threads", "p50(ms)", "p90(ms)", "Runs"], rows,
                  text_cols=3, title="Inference at model resolution (Session.infer)")
    rows = []
    for r in results:
        e = r["end_to_end"]
        rows.append([r["name"], e["megapixels"], e["threads"], _ms(e["decode_ms"]), _ms(e["rgba_ms"]),
                     _ms(e["encode_ms"]), _ms(e["total_ms"]),
                     "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"])
    second = table(["Model", "MP", "Threads", "Decode(ms)", "To RGBA(ms)", "PNG enc(ms)", "Total(ms)",
                    "CLI peak RSS(MB)"], rows, title="End to end on one photo")
    return first + "\n\n" + second
