"""Pack a distillation folder small enough to carry to a rented GPU machine.

Why: a remote training box often takes only a few tens of MB of files with the job. Photos go to
WebP (about 40% smaller than JPEG at the same look) at a long side just above the training crop,
alphas to lossless WebP (20% smaller than PNG) re-quantised to the teacher's own 32 levels (resizing spreads them over 256
values, which compresses badly). The layout stays <set>/images + <set>/teacher, and file stems stay
the same, so `find_pairs` and the stem-keyed held-out split see the same photos.

    python scripts/pack_data.py ../shared/data/train .pack/train --side 288 --quality 60 \
        --label-root .cache/labels --exclude samples --thin caltech101
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from edgecut.compress.data import find_pairs, open_pair, stable_hash
from PIL import Image


def pack_one(pair, out: Path, side: int, quality: int, levels: int) -> int:
    img, alpha = open_pair(pair, side, Image.LANCZOS)
    if levels:
        step = 255 / (levels - 1)
        alpha = Image.fromarray((np.round(np.asarray(alpha) / step) * step).round().astype(np.uint8))
    kind = "masks" if pair.human else "teacher"
    im_path = out / pair.set / "images" / (pair.image.stem + ".webp")
    al_path = out / pair.set / kind / (pair.image.stem + ".webp")
    im_path.parent.mkdir(parents=True, exist_ok=True)
    al_path.parent.mkdir(parents=True, exist_ok=True)
    img.save(im_path, "WEBP", quality=quality, method=6)
    alpha.save(al_path, "WEBP", lossless=True, method=6)
    return im_path.stat().st_size + al_path.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--side", type=int, default=288, help="long side of the packed photos")
    ap.add_argument("--quality", type=int, default=60, help="WebP quality of the photos")
    ap.add_argument("--levels", type=int, default=32, help="alpha levels kept (0: all 256)")
    ap.add_argument("--exclude", type=Path, help="skip photos named as files in this folder (the demo samples)")
    ap.add_argument("--label-root", type=Path, action="append", default=[],
                    help="<DIR>/<set>/teacher folders written by `edgecut label` (repeatable; "
                         "they win over the set's own teacher/)")
    ap.add_argument("--sets", help="comma-separated set names (default: all with alphas)")
    ap.add_argument("--thin", action="append", default=[], metavar="SET",
                    help="pack only half of SET, the photos whose stem's sha1 starts with an even number "
                         "(stable, repeatable): how the biggest set makes room under a 64 MiB upload")
    args = ap.parse_args(argv)
    exclude = {p.name for p in args.exclude.iterdir()} if args.exclude else ()
    pairs = find_pairs(args.src, sets=args.sets and args.sets.split(","), label_roots=args.label_root,
                       exclude=exclude)
    pairs = [p for p in pairs if p.set not in args.thin
             or stable_hash(p.image.stem) % 2 == 0]
    from tqdm import tqdm

    with ThreadPoolExecutor() as pool:
        sizes = list(tqdm(pool.map(lambda p: pack_one(p, args.out, args.side, args.quality, args.levels), pairs),
                          total=len(pairs), desc="packing", unit="img"))
    print(f"{len(pairs)} pairs -> {args.out}: {sum(sizes) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
