"""How good are the mattes: several models over several benchmark sets in one run.

The prediction scored is exactly what a user gets, the runtime's full-resolution alpha
(`Session.alpha(rgb)`, edge-aware upsampling included), so a change to the runtime shows up
here too. Each set is a folder `<set>/{images,masks}` matched by file stem; the mean row weighs
every set equally, so a 30-image set counts as much as a 300-image one.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..runtime.errors import EdgecutError
from ..runtime.imageio import load_mask
from .cache import PredictionCache
from .metrics import METRICS, SetMetrics, valid_mask

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
COLUMNS = (("iou", "IoU"), ("mae", "MAE"), ("max_f", "maxF"), ("s_measure", "S"), ("boundary_f", "BF@3"))


def default_data_dir() -> Path:
    """$EDGECUT_DATA/bench, else the shared data folder beside the repository."""
    from ..compress.label import data_root

    return data_root() / "bench"


@dataclass
class BenchSet:
    name: str
    pairs: List[Tuple[Path, Path]]          # (image, mask)
    unmatched: int = 0                      # images without a mask


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


def load_set(root: Path, name: str) -> BenchSet:
    d = Path(root) / name
    if not (d / "images").is_dir() or not (d / "masks").is_dir():
        raise EdgecutError(f"{d}: a bench set needs images/ and masks/ folders")
    masks = {p.stem: p for p in (d / "masks").iterdir() if p.suffix.lower() == ".png"}
    images = sorted(p for p in (d / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS)
    first = {}
    for p in images:                   # a.jpg beside a.png: both were scored against masks/a.png
        first.setdefault(p.stem, p)
    twins = [p for p in images if first[p.stem] != p]
    if twins:
        named = ", ".join(f"{p.name} ({first[p.stem].name} is)" for p in twins[:3])
        _warn(f"note {d}: {len(twins)} photo(s) share a name with another and are not scored: "
              f"{named}{', ...' if len(twins) > 3 else ''}")
    pairs = [(p, masks[p.stem]) for p in first.values() if p.stem in masks]
    if not pairs:
        raise EdgecutError(f"{d}: no photo has a mask ({len(images)} photos in images/, {len(masks)} PNGs in "
                           "masks/; a mask is masks/<photo name>.png)")
    unmatched, orphans = len(first) - len(pairs), len(set(masks) - set(first))
    if unmatched or orphans:    # a renamed or missing file would otherwise shrink the set unseen
        _warn(f"note {d}: {unmatched} photo(s) without a mask and {orphans} mask(s) without a photo "
              f"are not scored ({len(pairs)} pairs)")
    return BenchSet(name, pairs, unmatched=unmatched)


def find_sets(root: Path, names: Optional[Sequence[str]] = None) -> List[BenchSet]:
    root = Path(root)
    if not root.is_dir():
        raise EdgecutError(f"{root}: no such bench folder (set --data or EDGECUT_DATA)")
    if not names:
        names = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
        if not names and (root / "images").is_dir():    # --data named one set, not the folder of sets
            raise EdgecutError(f"{root}: is a bench set itself; pass --data {root.resolve().parent} "
                               f"--sets {root.resolve().name}")
        if not names:
            raise EdgecutError(f"{root}: no <set>/images folders")
    return [load_set(root, n) for n in names]


def predict(session, rgb, size_hw: Tuple[int, int], refine: bool = True) -> np.ndarray:
    """The runtime's full-res alpha, resized to the mask if the two disagree."""
    h, w = np.asarray(rgb).shape[:2]
    if abs(w / h - size_hw[1] / size_hw[0]) > 0.02 * (w / h):
        raise EdgecutError(f"mask is {size_hw[1]}x{size_hw[0]}, not the photo's shape ({w}x{h})")
    a = np.asarray(session.alpha(rgb, refine=refine), dtype=np.uint8)
    if a.shape != tuple(size_hw):
        a = np.asarray(Image.fromarray(a).resize((size_hw[1], size_hw[0]), Image.BILINEAR))
    return a


def evaluate_set(session, bench: BenchSet, limit: Optional[int] = None, refine: bool = True,
                 tick=lambda: None, log=_warn, cache=None, worst=None) -> dict:
    """`cache`: a PredictionCache; cached alphas of this exact model file are scored, not recomputed.
    A cache that cannot be written (full disk, a folder where an entry goes) is noted and the photo
    still scored: its prediction took the model seconds and is not the photo's fault. `worst`: a
    gallery.Worst that keeps the lowest-IoU photos (their names and scores go into the results)."""
    from ..runtime.imageio import load_image

    acc = SetMetrics()
    failed = []
    for image, mask in bench.pairs[:limit]:
        try:
            gt = load_mask(mask)
            if not valid_mask(gt).any():   # it scored IoU 1.0 and MAE 0 for any prediction
                raise EdgecutError(f"{mask}: no labelled pixels (all 128, the band to ignore)")
            pred = cache.get(bench.name, image) if cache is not None else None
            rgb = None
            if pred is None or pred.shape != gt.shape:
                rgb = load_image(image)
                pred = predict(session, rgb, gt.shape, refine)
                if cache is not None:
                    try:
                        cache.put(bench.name, image, pred)
                    except (EdgecutError, OSError) as e:
                        log(f"note: {image} is scored but not cached, nor the rest of {bench.name} "
                            f"({str(e).splitlines()[0] or type(e).__name__})")
                        cache = None    # once, not a line per photo of a full disk
            elif cache is not None:
                cache.hits += 1
        except (EdgecutError, OSError, ValueError, SyntaxError) as e:
            failed.append(str(image))
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log(f"skip {reason}" if str(image) in reason else f"skip {image}: {reason}")
            tick()
            continue
        one = acc.add(pred, gt)
        if worst is not None and worst.wants(one["iou"]):
            try:   # a cached prediction's photo is read again, for its thumbnail
                worst.add(image, one["iou"], one["mae"], rgb if rgb is not None else load_image(image), pred, gt)
            except (EdgecutError, OSError) as e:
                log(f"note: {image} is scored but not drawn in the worst photos ({str(e).splitlines()[0]})")
        tick()
    out = acc.summary()
    out["failed"] = failed
    if worst is not None:
        out["worst"] = worst.summary()
    return out


def mean_over_sets(per_set: Dict[str, dict]) -> dict:
    out = {}
    for k in METRICS:
        vals = [s[k] for s in per_set.values() if s.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["images"] = sum(s.get("images", 0) for s in per_set.values())
    return out


def run_accuracy(models: Sequence[str], sets: List[BenchSet], limit: Optional[int] = None,
                 threads: Optional[int] = None, teacher_path: Optional[str] = None,
                 refine: bool = True, progress: bool = True, cache_dir=None, worst: int = 0,
                 worst_dir=None) -> List[dict]:
    """`worst` N > 0: each set's N lowest-IoU photos are named in its results and drawn in a
    contact sheet, <worst_dir>/<model>/<set>.jpg, written as each set ends."""
    from ..compress.teachers import open_model
    from . import gallery
    from .report import model_info

    total = len(models) * sum(len(s.pairs[:limit]) for s in sets)
    bar, log = _bar(total, progress)
    results, names = [], set()
    try:
        for spec in models:
            session = open_model(spec, teacher_path, threads)
            info = model_info(spec, session)
            # two models of one name (a re-export beside the shipped file): told apart in the table,
            # and neither's contact sheets written over the other's
            label = info["name"] if info["name"] not in names else f"{info['name']} ({spec})"
            names.add(info["name"])
            info["label"] = label
            cache = PredictionCache(cache_dir, session.model_path, refine, session.tta) if cache_dir else None
            per_set = {}
            for bench in sets:
                if bar is not None:
                    bar.set_description(f"{label}/{bench.name}")
                kept = gallery.Worst(worst) if worst else None
                per_set[bench.name] = evaluate_set(session, bench, limit, refine,
                                                   tick=(bar.update if bar is not None else lambda: None), log=log,
                                                   cache=cache, worst=kept)
                if kept is not None and kept.rows():
                    gallery.write_sheet(kept, Path(worst_dir), label, bench.name)
            if cache is not None and cache.hits:   # a rerun after an interruption resumes: say so
                log(f"note: {cache.hits} prediction(s) of {info['name']} read from the cache {cache.dir}")
            results.append({**info, "sets": per_set, "mean": mean_over_sets(per_set)})
    finally:
        if bar is not None:
            bar.close()
    return results


def _bar(total: int, enabled: bool):
    """A progress bar and the function that prints a line past it; both on stderr, so stdout holds
    only the results table."""
    if not enabled:
        return None, _warn
    from tqdm import tqdm

    return (tqdm(total=total, unit="img", dynamic_ncols=True, leave=False),
            lambda line: tqdm.write(line, file=sys.stderr))


def results_table(results: List[dict]) -> str:
    from .report import table

    rows = []
    for r in results:
        for name, s in list(r["sets"].items()) + [("mean", r["mean"])]:
            rows.append([r.get("label", r["name"]), r.get("precision", ""), name, s.get("images", 0)] + [s.get(k) for k, _ in COLUMNS])
    return table(["Model", "Prec", "Set", "Images"] + [h for _, h in COLUMNS], rows, text_cols=3)
