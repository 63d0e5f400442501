"""`edgecut bench agree`: do two exports of one model give the same alpha?

Accuracy against masks says whether a model is good; this says whether a conversion kept it:
ONNX against TFLite, fp32 against int8, x86 against ARM. Both models see the same photos through
their own manifests' preprocessing, and their alphas are compared at the reference model's output
resolution (the other's is resized there if it differs), in 1/255 steps: the unit of the 8-bit
masks users save. The figures are the mean over photos of the mean absolute difference, the
largest per-photo mean, the 99th percentile of all pixels' differences and the largest one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image


def _at(alpha: np.ndarray, shape) -> np.ndarray:
    if alpha.shape == tuple(shape):
        return alpha
    img = Image.fromarray(alpha.astype(np.float32), "F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def agreement(reference, other, photos: Sequence, tick: Callable[[], None] = lambda: None,
              log: Callable[[str], None] = None) -> dict:
    """Alpha differences (in 1/255) of session `other` against session `reference` over `photos`."""
    from ..runtime.errors import EdgecutError
    from ..runtime.imageio import load_image

    from .accuracy import _warn

    log = log or _warn
    means: List[float] = []
    hist = np.zeros(256, np.int64)          # counts of |difference| rounded to whole 1/255 steps
    worst_pixel = 0.0
    failed = []
    for p in photos:
        try:
            rgb = load_image(p)
        except EdgecutError as e:
            log(f"skipped {e}")
            failed.append(str(p))
            tick()
            continue
        a = reference.infer(rgb)
        b = _at(other.infer(rgb), a.shape)
        d = np.abs(a - b) * 255.0
        means.append(float(d.mean()))
        worst_pixel = max(worst_pixel, float(d.max()))
        hist += np.bincount(np.minimum(np.rint(d).astype(np.int64), 255).ravel(), minlength=256)
        tick()
    return {"photos": len(means), "mean": float(np.mean(means)) if means else None,
            "worst_photo_mean": max(means) if means else None, "p99": _p99(hist), "max": worst_pixel,
            "hist": hist.tolist(), "failed": failed}


def _p99(hist) -> Optional[int]:
    hist = np.asarray(hist)
    return int(np.searchsorted(np.cumsum(hist), 0.99 * hist.sum())) if hist.sum() else None


def photo_sets(root: Path, names: Optional[Sequence[str]] = None) -> Dict[str, List[Path]]:
    """The photos to compare on, by set name. Masks play no part here, so a folder of one's own
    photos will do (searched recursively, one set named after the folder): a conversion is best
    checked on the photos it will meet. A bench folder's <set>/images are read with or without masks/."""
    from ..compress.label import IMAGE_EXTS, find_images
    from ..runtime.errors import EdgecutError

    root = Path(root)
    if not root.is_dir():
        raise EdgecutError(f"{root}: no such folder of photos (set --data or EDGECUT_DATA)")
    found = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if found:
        missing = [n for n in names or () if n not in found]
        if missing:
            raise EdgecutError(f"--sets {missing[0]}: no {root / missing[0] / 'images'} folder "
                               f"(sets here: {', '.join(found)})")
        sets = {n: find_images(root / n / "images") for n in names or found}
    elif names:
        raise EdgecutError(f"--sets: {root} has no <set>/images folders; without --sets its photos are "
                           "compared as one set")
    elif (root / "images").is_dir():     # one bench set
        sets = {root.resolve().name: find_images(root / "images")}
    else:
        sets = {root.resolve().name: find_images(root)}
    empty = [n for n, files in sets.items() if not files]
    if empty:
        raise EdgecutError(f"{root / empty[0] if empty[0] in found else root}: no photos "
                           f"({', '.join(sorted(IMAGE_EXTS))})")
    return sets


def run_agreement(reference: str, others: Sequence[str], photos: Dict[str, List[Path]],
                  limit: Optional[int] = None, threads: Optional[int] = None,
                  teacher_path: Optional[str] = None, progress: bool = True) -> List[dict]:
    from ..compress.teachers import open_model
    from .accuracy import _bar
    from .report import model_info

    photos = {name: files[:limit] for name, files in photos.items()}
    total = len(others) * sum(len(v) for v in photos.values())
    bar, log = _bar(total, progress)
    ref = open_model(reference, teacher_path, threads)
    results = []
    try:
        for spec in others:
            session = open_model(spec, teacher_path, threads)
            per_set = {}
            for name, files in photos.items():
                per_set[name] = agreement(ref, session, files, tick=(bar.update if bar is not None else lambda: None),
                                          log=log)
            results.append({"reference": model_info(reference, ref), "model": model_info(spec, session),
                            "sets": per_set, "all": _pool(per_set)})
    finally:
        if bar is not None:
            bar.close()
    return results


def _pool(per_set: dict) -> dict:
    done = [s for s in per_set.values() if s["photos"]]
    n = sum(s["photos"] for s in done)
    if not n:
        return {"photos": 0, "mean": None, "worst_photo_mean": None, "p99": None, "max": None}
    return {"photos": n, "mean": sum(s["mean"] * s["photos"] for s in done) / n,
            "worst_photo_mean": max(s["worst_photo_mean"] for s in done),
            "p99": _p99(np.sum([s["hist"] for s in done], axis=0)), "max": max(s["max"] for s in done)}


def results_table(results: List[dict]) -> str:
    from .report import table

    rows = []
    for r in results:
        label = f"{r['model']['name']} {r['model']['format']} {r['model']['precision']}"
        ref = f"{r['reference']['name']} {r['reference']['format']} {r['reference']['precision']}"
        for name, s in list(r["sets"].items()) + [("all", r["all"])]:
            rows.append([label, ref, name, s["photos"], s["mean"], s["worst_photo_mean"], s["p99"], s["max"]])
    return table(["Model", "Against", "Set", "Photos", "Mean |d|", "Worst photo", "p99", "Max"], rows, text_cols=3,
                 title="Alpha difference, in 1/255, at the reference model's output resolution")
