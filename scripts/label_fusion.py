"""Which labels should a student learn people from? Two teachers' alphas and their blends, scored on
human masks.

Why: the IS-Net teacher under-segments people in portraits (0.921 IoU on portrait_eg) where MediaPipe
Selfie scores 0.961, while on full-length fashion photos it is the other way round. Before relabelling
training photos, this compares the candidate labels on the bench sets that have human masks, from the
predictions `edgecut bench accuracy --cache DIR` stored (full resolution, edge-aware upsampling):

    edgecut bench accuracy --sets portrait_eg,ccp_person --model teacher:isnet-imgly \
        --model peer:mediapipe-selfie --cache runs/cache/predictions
    python scripts/label_fusion.py runs/cache/predictions/<teacher sha>-refine runs/cache/predictions/<mediapipe sha>-refine
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edgecut.bench.accuracy import default_data_dir
from edgecut.bench.metrics import iou, mae
from edgecut.runtime.imageio import load_mask


def blends(t: np.ndarray, m: np.ndarray) -> dict:
    """Candidate labels (float alphas in [0, 1]) from teacher `t` and peer `m` (uint8 alphas)."""
    tf, mf = t / 255.0, m / 255.0
    peer_mask = Image.fromarray(((m > 127) * 255).astype(np.uint8))
    grown = np.asarray(peer_mask.filter(ImageFilter.MaxFilter(15))) / 255.0   # dilated by 7 px
    inside = tf * grown
    return {"teacher": tf, "peer": mf, "mean": (tf + mf) / 2, "teacher inside dilated peer": inside,
            "max(teacher inside peer, peer)": np.maximum(inside, mf)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", type=Path, help="cache folder of the first teacher (<sha>-refine)")
    ap.add_argument("peer", type=Path, help="cache folder of the second")
    ap.add_argument("--data", type=Path, default=None, help="bench root (default $EDGECUT_DATA/bench)")
    ap.add_argument("--sets", default="portrait_eg,ccp_person")
    args = ap.parse_args(argv)
    data = args.data or default_data_dir()
    for s in args.sets.split(","):
        scores: dict = {}
        for p in sorted((args.teacher / s).glob("*.png")):
            q = args.peer / s / p.name
            masks = list((data / s / "masks").glob(p.stem + ".*"))
            if not q.is_file() or not masks:
                continue
            gt = load_mask(masks[0])
            t = np.asarray(Image.open(p).convert("L"), np.float32)
            m = np.asarray(Image.open(q).convert("L"), np.float32)
            for name, a in blends(t, m).items():
                u = np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)
                scores.setdefault(name, []).append((iou(u, gt), mae(u, gt)))
        n = len(next(iter(scores.values()), []))
        print(f"{s}: {n} photos")
        for name, v in scores.items():
            v = np.asarray(v)
            print(f"  {name:32s} IoU {v[:, 0].mean():.4f}  MAE {v[:, 1].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
