"""The photos a model does worst on, as contact sheets: `edgecut bench accuracy --worst N`.

Why: a set's mean IoU says how much is lost, not what. The portrait gap was found by looking at the
default's worst photos one by one (printed clothing cut out as background); a sheet per model and set
makes that a command. Each row is one photo: the photo, the predicted alpha, and where it is wrong
(red: background kept, blue: subject lost, grey: the mask's unknown band), worst IoU first.
Only the N worst are kept while a set runs, as small thumbnails, so memory stays flat.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metrics import IGNORE

THUMB_SIDE = 240     # long side of each panel, px
LABEL_H = 18         # the strip above each row that names the photo and its scores


@dataclass(order=True)
class _Entry:
    key: float                                   # -IoU: the heap's top (smallest key) is the best kept, dropped first
    order: int                                   # -(scoring order): of two equal IoUs, the later is dropped
    photo: str = field(compare=False)
    iou: float = field(compare=False)
    mae: float = field(compare=False)
    panels: tuple = field(compare=False, default=())


@dataclass
class Worst:
    """The `n` lowest-IoU photos of one set, each with its three panels."""
    n: int
    _heap: List[_Entry] = field(default_factory=list)
    _seen: int = 0

    def wants(self, iou: float) -> bool:
        """Whether a photo of this IoU would be kept (so its photo is only loaded when it is)."""
        return self.n > 0 and (len(self._heap) < self.n or -iou > self._heap[0].key)

    def add(self, photo: Path, iou: float, mae: float, rgb, pred: np.ndarray, gt: np.ndarray) -> None:
        self._seen += 1
        if not self.wants(iou):
            return
        entry = _Entry(-iou, -self._seen, Path(photo).name, iou, mae, _panels(rgb, pred, gt))
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def rows(self) -> List[_Entry]:
        """Worst first; ties by the order the photos were scored."""
        return sorted(self._heap, key=lambda e: (e.iou, -e.order))

    def summary(self) -> List[dict]:
        return [{"photo": e.photo, "iou": e.iou, "mae": e.mae} for e in self.rows()]


def _panels(rgb, pred: np.ndarray, gt: np.ndarray) -> tuple:
    """(photo, alpha, errors) thumbnails at the mask's aspect, long side THUMB_SIDE."""
    h, w = gt.shape
    scale = THUMB_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb))
    photo = rgb.convert("RGB").resize(size, Image.BILINEAR)
    alpha = Image.fromarray(pred).resize(size, Image.BILINEAR).convert("RGB")
    p, g, band = pred >= 128, gt > IGNORE, gt == IGNORE
    err = np.asarray(rgb.convert("L").resize((w, h)), np.uint8)
    err = np.repeat((err // 3 + 40)[..., None], 3, axis=2)          # the photo, dimmed
    err[p & ~g & ~band] = (230, 40, 40)                               # background kept
    err[~p & g & ~band] = (40, 90, 240)                               # subject lost
    err[band] = (128, 128, 128)
    return photo, alpha, Image.fromarray(err).resize(size, Image.NEAREST)


def sheet(worst: Worst, title: str) -> Image.Image:
    """One image: a title line, then a row per photo (label strip + three panels)."""
    rows = worst.rows()
    font = ImageFont.load_default()
    width = max([3 * e.panels[0].width + 8 for e in rows] + [3 * THUMB_SIDE + 8])
    heights = [LABEL_H + e.panels[0].height + 4 for e in rows]
    out = Image.new("RGB", (width, LABEL_H + 4 + sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.text((4, 3), f"{title}  (photo | alpha | red: background kept, blue: subject lost, grey: unknown)",
              fill=(0, 0, 0), font=font)
    y = LABEL_H + 4
    for e, h in zip(rows, heights):
        draw.text((4, y + 3), f"{e.photo}  IoU {e.iou:.3f}  MAE {e.mae:.3f}", fill=(0, 0, 0), font=font)
        x = 0
        for panel in e.panels:
            out.paste(panel, (x, y + LABEL_H))
            x += panel.width + 4
        y += h
    return out


def write_sheet(worst: Worst, folder: Path, model: str, set_name: str) -> Path:
    """<folder>/<model>/<set>.jpg, written atomically; a model name is made safe as a folder name
    (a teacher:SPEC or a path may hold ':' or '/')."""
    from ..runtime.imageio import save_image_atomic

    safe = re.sub(r"[^\w.+-]+", "_", model).strip("._") or "model"
    out = Path(folder) / safe / f"{set_name}.jpg"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(sheet(worst, f"{model} on {set_name}: the {len(worst.rows())} lowest IoU"), out, "JPEG",
                      quality=90)
    return out
