"""Distillation data: (photo, alpha) pairs from image folders, held in memory, augmented in batches.

Why in memory and in torch: on a 2-core machine a DataLoader's worker processes steal the cores
the training step needs; 4,700 photos at 320 px fit in ~1 GB, and batch augmentation in torch costs
a few ms per step.

Folder layout (as in ../shared/data/train): <set>/images/<id>.jpg with the alpha for it in
<set>/masks/<id>.png (human, preferred) or <set>/teacher/<id>.png (teacher); alphas may also be
lossless .webp (as `scripts/pack_data.py` writes them). Extra label roots
(`label_roots`) hold <set>/teacher/<id>.png written by `edgecut label` for read-only data folders.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
ALPHA_EXTS = (".png", ".webp")


@dataclass(frozen=True)
class Pair:
    set: str
    image: Path
    alpha: Path
    human: bool  # a human mask rather than a teacher alpha


def find_pairs(root, sets=None, label_roots=(), exclude=()) -> list[Pair]:
    """Every photo under root/<set>/images that has an alpha somewhere; unlabelled ones are skipped,
    and so are photos named in `exclude` (e.g. the demo samples, to keep the demo honest)."""
    root = Path(root)
    exclude = set(exclude)
    pairs = []
    for set_dir in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
        if sets and set_dir.name not in sets:
            continue
        alpha_dirs = [(set_dir / "masks", True), (set_dir / "teacher", False)]
        alpha_dirs += [(Path(r) / set_dir.name / "teacher", False) for r in label_roots]
        for img in sorted((set_dir / "images").iterdir()):
            if img.suffix.lower() not in IMAGE_EXTS or img.name in exclude:
                continue
            alpha = next(((d / (img.stem + ext), human) for d, human in alpha_dirs for ext in ALPHA_EXTS
                          if (d / (img.stem + ext)).is_file()), None)
            if alpha:
                pairs.append(Pair(set_dir.name, img, *alpha))
    return pairs


def is_holdout(pair: Pair, fraction: float) -> bool:
    """A stable split by set and file stem, so resuming, adding photos or re-encoding them (a packed
    WebP copy for a remote GPU) never moves a photo across it."""
    h = int(hashlib.sha1(f"{pair.set}/{pair.image.stem}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def split_pairs(pairs, fraction: float = 0.03):
    train = [p for p in pairs if not is_holdout(p, fraction)]
    held = [p for p in pairs if is_holdout(p, fraction)]
    return train, held


def load_pair(pair: Pair, max_side: int = 320):
    """-> (uint8 3,H,W image tensor, uint8 1,H,W alpha tensor), long side at most max_side."""
    img = Image.open(pair.image).convert("RGB")
    alpha = Image.open(pair.alpha).convert("L")
    if alpha.size != img.size:
        alpha = alpha.resize(img.size, Image.BILINEAR)
    scale = max_side / max(img.size)
    if scale < 1:
        size = (round(img.width * scale), round(img.height * scale))
        img, alpha = img.resize(size, Image.BILINEAR), alpha.resize(size, Image.BILINEAR)
    im = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    al = torch.from_numpy(np.asarray(alpha).copy())[None]
    return im, al


def load_all(pairs, max_side: int = 320, progress: bool = True):
    it = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc="loading photos", unit="img")
    return [load_pair(p, max_side) for p in it]


@dataclass
class AugmentConfig:
    size: int = 256
    crop_scale: tuple = (0.3, 1.0)     # fraction of the photo's area kept by the random crop
    crop_ratio: tuple = (0.75, 1.333)  # aspect jitter (the runtime stretches photos to a square)
    composite_p: float = 0.35          # paste a teacher-cut subject from another photo
    fg_scale: tuple = (0.3, 0.95)      # pasted subject's long side, fraction of the output side
    bg_blur_p: float = 0.25            # defocus the background before pasting
    gray_p: float = 0.05
    jitter: float = 0.3                # brightness / contrast / saturation strength
    noise_p: float = 0.2


class BatchAugmenter:
    """Random crops, flips, colour jitter and composites, done on whole batches in torch."""

    def __init__(self, samples, cfg: AugmentConfig, mean, std, seed: int = 0, device="cpu"):
        """samples: (image, alpha) uint8 tensors, already on `device`. The random draws always come
        from one CPU generator, so a GPU run makes the same choices as a CPU run with the same seed."""
        self.samples = samples
        self.cfg = cfg
        self.device = torch.device(device)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(std).view(1, 3, 1, 1).to(self.device)
        self.g = torch.Generator().manual_seed(seed)

    def _u(self, lo=0.0, hi=1.0, n=()):
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.g))

    def _crop(self, idx: int, size: int):
        """One random-resized crop of a sample: (3,size,size) float in [0,1], (1,size,size)."""
        im, al = self.samples[idx]
        _, h, w = im.shape
        c = self.cfg
        for _ in range(10):
            area = h * w * float(self._u(*c.crop_scale))
            ratio = math.exp(float(self._u(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]))))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if cw <= w and ch <= h:
                break
        else:
            cw, ch = w, h
        x0, y0 = self._randint(w - cw + 1), self._randint(h - ch + 1)
        x = torch.cat([im[:, y0:y0 + ch, x0:x0 + cw], al[:, y0:y0 + ch, x0:x0 + cw]], 0)[None].float() / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if float(self._u()) < 0.5:
            x = x.flip(-1)
        return x[:3], x[3:]

    def _jitter(self, x):
        """Per-image brightness, contrast, saturation and channel-gain jitter; x: B,3,H,W in [0,1]."""
        b, dev = x.shape[0], x.device
        j = self.cfg.jitter
        bright = self._u(1 - j, 1 + j, (b, 1, 1, 1)).to(dev)
        contrast = self._u(1 - j, 1 + j, (b, 1, 1, 1)).to(dev)
        sat = self._u(1 - j, 1 + j, (b, 1, 1, 1)).to(dev)
        gains = self._u(1 - j / 3, 1 + j / 3, (b, 3, 1, 1)).to(dev)
        gray = x.mean(1, keepdim=True)
        x = gray + (x - gray) * sat
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * contrast + m
        x = x * bright * gains
        to_gray = (self._u(n=(b, 1, 1, 1)) < self.cfg.gray_p).float().to(dev)
        x = x * (1 - to_gray) + x.mean(1, keepdim=True) * to_gray
        noisy = (self._u(n=(b, 1, 1, 1)) < self.cfg.noise_p).float().to(dev)
        x = x + noisy * torch.randn(x.shape, generator=self.g).to(dev) * 0.03
        return x.clamp(0, 1)

    def _defocus(self, x):
        k = 2 * self._randint(3) + 3
        return F.avg_pool2d(x[None], k, 1, k // 2, count_include_pad=False)[0]

    def _foreground(self, size: int):
        """A whole teacher-cut subject (its alpha's bounding box), scaled to a random size:
        pasting random crops instead gave subjects with straight cut edges no photo has."""
        im, al = self.samples[self._randint(len(self.samples))]
        rows, cols = (al[0] > 127).any(1).nonzero(), (al[0] > 127).any(0).nonzero()
        if len(rows) < 8 or len(cols) < 8:
            return self._crop(self._randint(len(self.samples)), max(8, size // 2))
        y0, y1 = max(0, int(rows[0]) - 4), min(al.shape[1], int(rows[-1]) + 5)
        x0, x1 = max(0, int(cols[0]) - 4), min(al.shape[2], int(cols[-1]) + 5)
        x = torch.cat([im, al])[:, y0:y1, x0:x1][None].float() / 255
        s = size * float(self._u(*self.cfg.fg_scale)) / max(y1 - y0, x1 - x0)
        hw = (max(8, min(size, round((y1 - y0) * s))), max(8, min(size, round((x1 - x0) * s))))
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
        if float(self._u()) < 0.5:
            x = x.flip(-1)
        return x[:3], x[3:]

    def _composite(self, bg, bg_alpha, size):
        """Paste a teacher-cut subject from another photo onto bg. The new alpha is the union of
        both subjects, as the teacher itself marks every salient object."""
        fg, fa = self._foreground(size)
        fg = self._jitter(fg[None])[0]
        h, w = fa.shape[-2:]
        y0, x0 = self._randint(size - h + 1), self._randint(size - w + 1)
        if float(self._u()) < self.cfg.bg_blur_p:
            bg = self._defocus(bg)
        a = torch.zeros(1, size, size, device=bg.device)
        f = torch.zeros(3, size, size, device=bg.device)
        a[:, y0:y0 + h, x0:x0 + w] = fa
        f[:, y0:y0 + h, x0:x0 + w] = fg
        return f * a + bg * (1 - a), a + (1 - a) * bg_alpha

    def batch(self, batch_size: int):
        """-> normalised images B,3,S,S and alphas B,1,S,S in [0,1]."""
        size = self.cfg.size
        ims, als = [], []
        for _ in range(batch_size):
            im, al = self._crop(self._randint(len(self.samples)), size)
            if float(self._u()) < self.cfg.composite_p:
                im, al = self._composite(im, al, size)
            ims.append(im)
            als.append(al)
        x = self._jitter(torch.stack(ims))
        return (x - self.mean) / self.std, torch.stack(als).clamp(0, 1)


class AugmentStream(torch.utils.data.IterableDataset):
    """Endless augmented batches for a DataLoader: each worker process draws its own seeded stream.

    Why: on a GPU the step takes a few ms and one Python augmenter becomes the bottleneck; with
    forked workers the photos stay shared in memory and batches arrive pinned, ready to copy.
    Worker k uses seed + 7919 k, so a run with a fixed worker count is reproducible.
    """

    def __init__(self, samples, cfg: AugmentConfig, mean, std, batch_size: int, seed: int = 0, device="cpu"):
        self.samples, self.cfg, self.mean, self.std = samples, cfg, mean, std
        self.batch_size, self.seed, self.device = batch_size, seed, device

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        if info:
            torch.set_num_threads(1)  # many workers, one core each
        aug = BatchAugmenter(self.samples, self.cfg, self.mean, self.std, seed=self.seed + 7919 * wid,
                             device=self.device)
        while True:
            yield aug.batch(self.batch_size)


def batch_stream(samples, cfg: AugmentConfig, mean, std, batch_size: int, seed: int = 0,
                 workers: int = 0, device="cpu"):
    """An endless iterator of (x, y) batches.

    workers == 0: augmented in the training process on `device` (the photos are moved there): on a
    2-core CPU that leaves the cores to the step, on a GPU it is the fastest (~1 GB of photos fits,
    and the per-photo ops run as small kernels). workers > 0: CPU worker processes, batches pinned
    for a quick copy to a GPU."""
    device = torch.device(device)
    if workers <= 0:
        if device.type != "cpu":
            samples = [(im.to(device), al.to(device)) for im, al in samples]
        return iter(AugmentStream(samples, cfg, mean, std, batch_size, seed, device))
    stream = AugmentStream(samples, cfg, mean, std, batch_size, seed)
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin,
                                         prefetch_factor=4, persistent_workers=True)
    return iter(loader)


def eval_tensors(samples, size: int, mean, std):
    """Held-out photos stretched to the model's square input, as the runtime does."""
    xs, ys = [], []
    for im, al in samples:
        x = torch.cat([im, al], 0)[None].float() / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        xs.append(x[:3])
        ys.append(x[3:])
    x = torch.stack(xs)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.stack(ys)
