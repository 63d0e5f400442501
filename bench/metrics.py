"""Segmentation metrics for soft alpha against binary masks, with an ignore band.

Inputs are uint8 HxW: `pred` the model's alpha, `gt` a 0/255 mask where 128 marks pixels of
unknown label (GrabCut's band), which must neither help nor hurt a model. Two ways of ignoring:

* pixel-wise metrics (IoU, MAE, precision/recall for max-F) simply drop band pixels;
* spatial metrics (S-measure, boundary F) need a whole image, so inside the band both gt and
  pred are set to the prediction's own binary decision (pred >= 128): the band then agrees
  perfectly and the boundary passes wherever the model put it.

Max-F follows the usual SOD protocol (as in pysodmetrics' `Fmeasure`): per image, precision and
recall at the 256 thresholds `pred >= t`; these curves are averaged over the images of a set and
the maximum of F_beta (beta^2 = 0.3) over thresholds is reported. Predictions are NOT min-max
normalised per image (pysodmetrics does that): an alpha is a final product, its scale matters.

We compute everything here in numpy + Pillow instead of calling pysodmetrics because its releases
pin numpy below 2.3.5 (1.6.x) or 2 (1.4.x), and pull scipy/scikit-image/OpenCV; the S-measure and
F-measure code follows pysodmetrics 1.4 step by step and is checked against it to 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

IGNORE = 128
BETA2 = 0.3
EPS = np.spacing(1)          # as pysodmetrics
N_THRESHOLDS = 256


def _check(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same HxW")


def valid_mask(gt: np.ndarray) -> np.ndarray:
    return gt != IGNORE


# --- pixel-wise ---------------------------------------------------------------------------------
def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of pred >= 128 against gt >= 128 over known pixels; two empty masks agree (1.0)."""
    _check(pred, gt)
    v = valid_mask(gt)
    p, g = (pred >= 128) & v, (gt > IGNORE) & v
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    _check(pred, gt)
    v = valid_mask(gt)
    if not v.any():
        return 0.0
    return float(np.abs(pred[v].astype(np.float64) - gt[v]).mean() / 255.0)


def pr_curve(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `pred >= t` for t = 255 .. 0 (index 0 is the strictest)."""
    _check(pred, gt)
    v = valid_mask(gt)
    fg = (gt > IGNORE) & v
    bg = (gt < IGNORE) & v
    fg_hist = np.bincount(pred[fg].ravel(), minlength=256)[::-1]
    bg_hist = np.bincount(pred[bg].ravel(), minlength=256)[::-1]
    tp = np.cumsum(fg_hist).astype(np.float64)
    fp = np.cumsum(bg_hist).astype(np.float64)
    n_fg = tp[-1]
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / n_fg if n_fg > 0 else np.zeros_like(tp)
    return precision, recall


def max_f(precision: np.ndarray, recall: np.ndarray, beta2: float = BETA2) -> float:
    """Max F_beta over thresholds of (mean) precision/recall curves."""
    num = (1 + beta2) * precision * recall
    den = beta2 * precision + recall
    f = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(f.max())


# --- spatial: the band takes the prediction's own decision -------------------------------------
def resolve_ignore(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(pred in [0,1] float64, gt bool) with band pixels made to agree; see module docstring."""
    _check(pred, gt)
    p = pred.astype(np.float64) / 255.0
    g = gt > IGNORE
    band = ~valid_mask(gt)
    if band.any():
        decided = pred[band] >= 128
        g = g.copy()
        g[band] = decided
        p[band] = decided
    return p, g


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure-measure (Fan et al., ICCV 2017): object- and region-aware similarity."""
    p, g = resolve_ignore(pred, gt)
    y = g.mean()
    if y == 0:
        return float(1 - p.mean())
    if y == 1:
        return float(p.mean())
    return float(max(0.0, alpha * _s_object(p, g) + (1 - alpha) * _s_region(p, g)))


def _object_score(x: np.ndarray) -> float:
    mean = x.mean()
    std = x.std(ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (mean ** 2 + 1 + std + EPS)


def _s_object(p: np.ndarray, g: np.ndarray) -> float:
    u = g.mean()
    return u * _object_score(p[g]) + (1 - u) * _object_score(1 - p[~g])


def _centroid(g: np.ndarray) -> Tuple[int, int]:
    h, w = g.shape
    if not g.any():
        return int(np.round(w / 2)), int(np.round(h / 2))
    y, x = np.argwhere(g).mean(axis=0).round()
    return int(x) + 1, int(y) + 1


def _ssim(p: np.ndarray, g: np.ndarray) -> float:
    n = p.size
    if n == 0:
        return 0.0
    x, y = p.mean(), g.mean()
    d = max(n - 1, 1)
    sx = ((p - x) ** 2).sum() / d
    sy = ((g - y) ** 2).sum() / d
    sxy = ((p - x) * (g - y)).sum() / d
    a = 4 * x * y * sxy
    b = (x ** 2 + y ** 2) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    return 1.0 if b == 0 else 0.0


def _s_region(p: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    x, y = _centroid(g)
    gf = g.astype(np.float64)
    w1 = x * y / (h * w)
    w2 = y * (w - x) / (h * w)
    w3 = (h - y) * x / (h * w)
    w4 = 1 - w1 - w2 - w3
    quads = [(slice(0, y), slice(0, x)), (slice(0, y), slice(x, w)),
             (slice(y, h), slice(0, x)), (slice(y, h), slice(x, w))]
    scores = [_ssim(p[q], gf[q]) for q in quads]
    return w1 * scores[0] + w2 * scores[1] + w3 * scores[2] + w4 * scores[3]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary: foreground pixels with a background 8-neighbour (the frame is not one)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    eroded = np.asarray(im.filter(ImageFilter.MinFilter(3))) > 0
    return mask & ~eroded


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.filter(ImageFilter.MaxFilter(2 * radius + 1))) > 0


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: int = 3) -> float:
    """F1 of boundary pixels matched within `tolerance` px (chessboard distance, via dilation).

    Precision: share of predicted boundary pixels near a true one; recall: the converse. Two
    masks with no boundary at all (both empty or both full) agree: 1.0.
    """
    p, g = resolve_ignore(pred, gt)
    bp, bg = _boundary(p >= 0.5), _boundary(g)
    n_p, n_g = np.count_nonzero(bp), np.count_nonzero(bg)
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = np.count_nonzero(bp & _dilate(bg, tolerance)) / n_p
    recall = np.count_nonzero(bg & _dilate(bp, tolerance)) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --- a set's worth -----------------------------------------------------------------------------
METRICS = ("iou", "mae", "max_f", "s_measure", "boundary_f")


@dataclass
class SetMetrics:
    """Accumulates one set: means of per-image metrics, max-F of the mean PR curve."""
    boundary_tolerance: int = 3
    per_image: Dict[str, List[float]] = field(default_factory=lambda: {k: [] for k in ("iou", "mae", "s_measure", "boundary_f")})
    precisions: List[np.ndarray] = field(default_factory=list)
    recalls: List[np.ndarray] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
        one = {
            "iou": iou(pred, gt),
            "mae": mae(pred, gt),
            "s_measure": s_measure(pred, gt),
            "boundary_f": boundary_f(pred, gt, self.boundary_tolerance),
        }
        for k, v in one.items():
            self.per_image[k].append(float(v))
        p, r = pr_curve(pred, gt)
        self.precisions.append(p)
        self.recalls.append(r)
        return one

    @property
    def count(self) -> int:
        return len(self.precisions)

    def summary(self) -> Dict[str, Optional[float]]:
        if not self.count:
            return {k: None for k in METRICS} | {"images": 0}
        out = {k: float(np.mean(v)) for k, v in self.per_image.items()}
        out["max_f"] = max_f(np.mean(self.precisions, axis=0), np.mean(self.recalls, axis=0))
        out["images"] = self.count
        return out
