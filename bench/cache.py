"""A cache of predicted alphas, keyed by the model file's sha256 and the refine setting.

Why: the teacher takes ~1.3-2.5 s per photo on this CPU, so scoring it on the 1,064 bench photos
costs most of an hour. Its predictions never change for the same model file, so `bench accuracy
--cache DIR` stores them as 8-bit PNGs and re-scores from them; a student and the teacher are still
scored by the same code on the same masks in one run. A cached PNG is only reused when the model's
hash matches, so a retrained model never reads stale predictions; an entry is also named by the
photo's own hash, so a photo replaced under the same name (or two photos of one stem, a.jpg and
a.png) never reads another photo's prediction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..runtime.imageio import save_image_atomic
from ..runtime.manifest import sha256_of


class PredictionCache:
    def __init__(self, root, model_path, refine: bool = True, tta: bool = False):
        digest = sha256_of(model_path)[:16]
        self.dir = Path(root) / f"{digest}-{'refine' if refine else 'bilinear'}{'-tta' if tta else ''}"
        self.hits = 0                   # entries scored instead of recomputed, counted by the caller
        self._missed = (None, None)     # (set, photo) -> entry of the last get that missed

    def _path(self, set_name: str, image: Path) -> Path:
        return self.dir / set_name / f"{Path(image).stem}.{sha256_of(image)[:12]}.png"

    def get(self, set_name: str, image: Path) -> Optional[np.ndarray]:
        p = self._path(set_name, image)
        if not p.is_file():
            self._missed = ((set_name, str(image)), p)
            return None
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("L"))
        except OSError:
            return None  # a damaged entry is recomputed

    def put(self, set_name: str, image: Path, alpha: np.ndarray) -> None:
        """After a get that missed for this photo, its entry name is reused: the photo is hashed
        once, not twice (a 12 MP JPEG takes ~10 ms; the teacher's 1,064 photos, a few seconds)."""
        key, missed = self._missed
        self._missed = (None, None)
        p = missed if key == (set_name, str(image)) else self._path(set_name, image)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_image_atomic(Image.fromarray(alpha, "L"), p, "PNG")
