"""Score models on the held-out photos of a packed training set (the stable 3% split that distill
holds out) against their teacher labels, through the whole runtime: IoU per photo (alpha >= 0.5,
distill's own `alpha_scores`) and MAE, the non-portrait photos apart from the portraits (MediaPipe-labelled).

Why a script and not `bench accuracy`: these labels are a teacher's, not human masks, so they pick
between checkpoints of one recipe and are never reported as accuracy.

    python scripts/heldout_score.py .pack/train edgecut-duo edgecut-duo+tta runs/export/x-int8
"""
import argparse

import numpy as np
import torch
from PIL import Image

from edgecut.compress.data import find_pairs, split_pairs
from edgecut.compress.distill import alpha_scores
from edgecut.compress.teachers import open_model

PORTRAITS = "portrait_shen2016_nontest"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="packed training set (scripts/pack_data.py)")
    ap.add_argument("models", nargs="+", help="as bench --model takes them (NAME+tta for TTA)")
    ap.add_argument("--fraction", type=float, default=0.03, help="held-out share (distill's default)")
    args = ap.parse_args()
    _, held = split_pairs(find_pairs(args.data), args.fraction)
    for spec in args.models:
        session = open_model(spec, None, 1)
        rows = {True: [], False: []}
        for p in held:
            rgb = np.asarray(Image.open(p.image).convert("RGB"))
            a = session.alpha(rgb) / 255.0
            with Image.open(p.alpha) as im:
                y = np.asarray(im.convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR)) / 255.0
            iou, mae = alpha_scores(torch.from_numpy(a)[None, None], torch.from_numpy(y)[None, None])
            rows[p.set == PORTRAITS].append((float(iou[0]), float(mae[0])))
        o, q = np.array(rows[False]), np.array(rows[True])
        print(f"{spec:40s} non-portrait {len(o)}: IoU {o[:, 0].mean():.4f} MAE {o[:, 1].mean():.4f} | "
              f"portraits {len(q)}: IoU {q[:, 0].mean():.4f}")


if __name__ == "__main__":
    main()
