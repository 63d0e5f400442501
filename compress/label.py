"""Label a folder of photos with a teacher's soft alpha: the targets the student is distilled on.

Labels are the teacher's raw output bilinearly resized to the photo's own size (no edge
refinement: the student must learn the teacher, not our post-processing), stored as 8-bit PNG.
Labelling thousands of photos takes hours, so the run is resumable: a label that exists and
decodes is never recomputed, and each one is written atomically so an interrupted run leaves no
half-written file behind.
"""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..runtime.errors import EdgecutError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class LabelSummary:
    written: int = 0
    skipped: int = 0                                   # already labelled
    failed: List[Tuple[Path, str]] = field(default_factory=list)

    def line(self) -> str:
        """The run in one line; the failed photos by name (the first three), each said on stderr."""
        names = ", ".join(p.name for p, _ in self.failed[:3]) + (", ..." if len(self.failed) > 3 else "")
        return (f"{self.written} written, {self.skipped} already done, {len(self.failed)} failed"
                + (f" ({names})" if self.failed else ""))


def find_images(root: Path) -> List[Path]:
    """Recursive and sorted, so --limit and resumed runs see the same photos in the same order."""
    return sorted(p for p in Path(root).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith("."))


def label_path(image: Path, images_dir: Path, out_dir: Path) -> Path:
    """Mirror sub-folders so photos with the same stem in different folders never collide."""
    rel = image.relative_to(images_dir)
    return out_dir / rel.parent / f"{rel.stem}.png"


def data_root() -> Path:
    """$EDGECUT_DATA, else the shared data folder beside the repository (read-only by contract)."""
    env = os.environ.get("EDGECUT_DATA")
    return (Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def _writable(folder: Path) -> bool:
    """Permission bits as well as access(): root passes access() on a read-only folder, and a
    folder marked read-only is meant to stay untouched whoever runs us."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def default_out_dir(images_dir: Path) -> Path:
    """`teacher/` beside `images/`, the layout of the training sets, unless that is the shared
    data (read-only by contract) or not writable: then the user must choose --out."""
    images_dir = Path(images_dir).resolve()
    out = images_dir.parent / "teacher"
    probe = out if out.exists() else out.parent
    if images_dir.is_relative_to(data_root()) or not _writable(probe):
        raise EdgecutError(f"{out}: beside read-only data; pass --out DIR "
                           "(e.g. .cache/labels/<set>/teacher)")
    return out


def check_out_dir(images_dir: Path, out_dir: Path) -> None:
    """Refuse a label folder that is the images folder or inside it: a second run would find the
    labels among the photos and label them too (and a photo could sit where a label belongs)."""
    images, out = Path(images_dir).resolve(), Path(out_dir).resolve()
    if out == images:
        raise EdgecutError(f"{out_dir}: output folder is the input folder; pass another --out")
    if out.is_relative_to(images):
        raise EdgecutError(f"{out_dir}: output folder is inside the images folder {images_dir} (the next run would "
                           "label its labels); pass an --out outside it, e.g. teacher/ beside it")


def png_mode(path: Path) -> Optional[str]:
    """The mode of a PNG that decodes in full, else None (not there, not a PNG, truncated)."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return None
            im.load()          # verify() misses truncated pixel data; a full decode does not
            return im.mode
    except (OSError, SyntaxError, ValueError):
        return None


def teacher_alpha(session, rgb: np.ndarray) -> np.ndarray:
    """The teacher's alpha at model resolution, bilinearly resized to the photo: uint8 HxW."""
    a = np.asarray(session.infer(rgb), dtype=np.float32)
    a = np.squeeze(a)
    h, w = rgb.shape[:2]
    if a.shape != (h, w):
        a = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.BILINEAR))
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def write_png_atomic(alpha: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        Image.fromarray(alpha, mode="L").save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def label_folder(session, images_dir: Path, out_dir: Path, limit: Optional[int] = None,
                 progress: bool = True, log=None) -> LabelSummary:
    from ..runtime.imageio import load_image

    log = log or _log_fn(progress)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise EdgecutError(f"{images_dir}: not a folder")
    check_out_dir(images_dir, out_dir)
    images = find_images(images_dir)
    if not images:
        raise EdgecutError(f"{images_dir}: no images found")
    if limit is not None:
        images = images[:limit]
    summary = LabelSummary()
    seen = set()
    inputs = {p.resolve() for p in images}
    for image in _progress(images, progress):
        dest = label_path(image, images_dir, out_dir)
        if dest in seen:
            summary.failed.append((image, f"another photo already maps to {dest.name}"))
            log(f"skip {image}: another photo already maps to {dest.name}")
            continue
        seen.add(dest)
        if dest.resolve() in inputs:   # never a photo taken for its own label, nor replaced by one
            summary.failed.append((image, f"its label {dest} is an input photo"))
            log(f"skip {image}: its label {dest} is an input photo")
            continue
        mode = png_mode(dest) if dest.exists() else None
        if mode == "L":
            summary.skipped += 1
            continue
        if mode is not None:   # a colour photo where its label goes (--out a photo folder): not done, and kept
            reason = f"{dest} exists and is not a grey label (mode {mode}; left as it is; pass another --out)"
            summary.failed.append((image, reason))
            log(f"skip {image}: {reason}")
            continue
        try:
            rgb = load_image(image)
        except (EdgecutError, OSError, ValueError, SyntaxError) as e:
            reason = _reason(e, image)
            summary.failed.append((image, reason))
            log(f"skip {image}: {reason}")
            continue
        alpha = teacher_alpha(session, np.asarray(rgb))
        try:
            write_png_atomic(alpha, dest)
        except OSError as e:   # this label cannot be written (a folder in its place, a full disk): the next may
            reason = f"cannot write {dest} ({e.strerror or e})"
            summary.failed.append((image, reason))
            log(f"skip {image}: {reason}")
            continue
        summary.written += 1
    return summary


def _reason(e: Exception, image: Path) -> str:
    """The first line of an error, without the photo's name where it starts with it (the log line
    names the photo once)."""
    text = (str(e).strip().splitlines() or [""])[0]
    for prefix in (f"{image}: ", f"{image.name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text or type(e).__name__


def _log_fn(progress: bool):
    """Messages go to stderr, through tqdm.write while a bar is drawn, so they don't break the bar."""
    if not progress:
        return lambda msg: print(msg, file=sys.stderr)
    from tqdm import tqdm

    return lambda msg: tqdm.write(msg, file=sys.stderr)


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit="img", dynamic_ncols=True)
