"""Distillation data: (photo, alpha) pairs from image folders, held in memory, augmented in batches.

Why in memory and in torch: on a 2-core machine a DataLoader's worker processes steal the cores
the training step needs; 4,700 photos at 320 px fit in ~1 GB, and batched augmentation in torch
costs ~5 ms per photo on one core (on a GPU machine, `batch_stream` can still hand it to workers).

Folder layout (as in ../shared/data/train): <set>/images/<id>.jpg with the alpha for it in
<set>/masks/<id>.png (human, preferred) or <set>/teacher/<id>.png (teacher); alphas may also be
lossless .webp (as `scripts/pack_data.py` writes them). Extra label roots
(`label_roots`) hold <set>/teacher/<id>.png written by `edgecut label` for read-only data folders.
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..runtime.errors import EdgecutError

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
    and so are photos named in `exclude` (e.g. the demo samples, to keep the demo honest).

    Which alpha: a human mask first, then the `label_roots` in order, then the set's own teacher/.
    Labels asked for by name win over the folder's, so a second teacher (e.g. MediaPipe Selfie for
    portraits, `edgecut label --teacher <peer folder>`) can replace the first on the sets it knows."""
    root = Path(root)
    exclude = set(exclude)
    pairs, twins = [], []
    for set_dir in sorted(p for p in root.iterdir() if (p / "images").is_dir()):
        if sets and set_dir.name not in sets:
            continue
        alpha_dirs = [(set_dir / "masks", True)]
        alpha_dirs += [(Path(r) / set_dir.name / "teacher", False) for r in label_roots]
        alpha_dirs += [(set_dir / "teacher", False)]
        seen = {}   # stem -> first photo: cup.jpg beside cup.png would both train on cup's one label
        for img in sorted((set_dir / "images").iterdir()):
            if img.suffix.lower() not in IMAGE_EXTS or img.name in exclude:
                continue
            if seen.setdefault(img.stem, img) != img:   # the one `edgecut label` labels, and bench scores
                twins.append((img, seen[img.stem]))
                continue
            alpha = next(((d / (img.stem + ext), human) for d, human in alpha_dirs for ext in ALPHA_EXTS
                          if (d / (img.stem + ext)).is_file()), None)
            if alpha:
                pairs.append(Pair(set_dir.name, img, *alpha))
    if twins:
        named = ", ".join(f"{p.name} ({first.name} is)" for p, first in twins[:3])
        print(f"note: {len(twins)} photo(s) share a name with another in their set and are not used: "
              f"{named}{', ...' if len(twins) > 3 else ''}", file=sys.stderr)
    return pairs


def stable_hash(key: str) -> int:
    """A 32-bit number from `key` that is the same on every machine and run (unlike `hash`): the
    basis of every split of the photos by name."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)


def is_holdout(pair: Pair, fraction: float) -> bool:
    """A stable split by set and file stem, so resuming, adding photos or re-encoding them (a packed
    WebP copy for a remote GPU) never moves a photo across it."""
    return stable_hash(f"{pair.set}/{pair.image.stem}") / 0xFFFFFFFF < fraction


def set_weights(pairs, weights: dict) -> list[float] | None:
    """Each pair's sampling weight from {set name: weight} (sets not named: 1); None when all are 1,
    so an unweighted run draws exactly as before."""
    unknown = set(weights) - {p.set for p in pairs}
    if unknown:
        raise ValueError(f"weights for sets with no photos: {', '.join(sorted(unknown))}")
    w = [float(weights.get(p.set, 1.0)) for p in pairs]
    return None if all(v == 1.0 for v in w) else w


def split_pairs(pairs, fraction: float = 0.03):
    train = [p for p in pairs if not is_holdout(p, fraction)]
    held = [p for p in pairs if is_holdout(p, fraction)]
    return train, held


def open_pair(pair: Pair, max_side: int = 320, resample=Image.BILINEAR):
    """-> (RGB photo, L alpha) as PIL images of one size, long side at most max_side; `resample`
    is the photo's filter when shrinking (the alpha is always bilinear). The photo is read as the
    runtime and `edgecut label` read it (upright by its EXIF orientation, 16-bit scaled, not
    clipped): a phone photo stored sideways would otherwise train sideways against its upright label."""
    from ..runtime.imageio import load_image, load_mask

    img = load_image(pair.image)
    if pair.human:   # 0/1 label maps, 16-bit PNGs and cut-outs read as the benchmark reads masks, not as empty
        alpha = Image.fromarray(load_mask(pair.alpha))
    else:
        alpha = Image.open(pair.alpha).convert("L")
    if alpha.size != img.size:
        alpha = alpha.resize(img.size, Image.BILINEAR)
    scale = max_side / max(img.size)
    if scale < 1:   # at least 1 px across: a 3000x2 strip would round to 0 and fail to resize
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img, alpha = img.resize(size, resample), alpha.resize(size, Image.BILINEAR)
    return img, alpha


def load_pair(pair: Pair, max_side: int = 320):
    """-> (uint8 3,H,W image tensor, uint8 1,H,W alpha tensor), long side at most max_side."""
    img, alpha = open_pair(pair, max_side)
    im = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    al = torch.from_numpy(np.asarray(alpha).copy())[None]
    return im, al


def _unreadable(pair: Pair, e: Exception) -> str:
    """Which file of a pair failed to decode, and why, in one line."""
    which = pair.image
    try:   # was it the photo or its alpha?
        with Image.open(pair.image) as im:
            im.load()
        which = pair.alpha
    except Exception:
        pass
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    reason = reason.replace(f"'{which}'", "").replace(str(which), "").strip(" :") or type(e).__name__
    return f"warning: skip {which}: not a readable image ({reason[:120]})"


def load_pairs(pairs, max_side: int = 320, progress: bool = True):
    """-> (the pairs that decode, their tensors). A photo or alpha that does not decode (a text file
    named .jpg, a truncated download) is skipped with one warning line on stderr naming it: one bad
    file among thousands must not end a training run."""
    import sys

    it = pairs
    write = print
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc="loading photos", unit="img")
        write = tqdm.write
    kept, samples = [], []
    for p in it:
        try:
            samples.append(load_pair(p, max_side))
        except (EdgecutError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            write(_unreadable(p, e), file=sys.stderr)
            continue
        kept.append(p)
    return kept, samples


def load_all(pairs, max_side: int = 320, progress: bool = True):
    """The tensors of the pairs that decode (`load_pairs`, which warns of the others)."""
    return load_pairs(pairs, max_side, progress)[1]


@dataclass
class AugmentConfig:
    size: int = 256
    crop_scale: tuple = (0.3, 1.0)     # fraction of the photo's area kept by the random crop
    crop_ratio: tuple = (0.75, 1.333)  # aspect jitter (the runtime stretches photos to a square)
    composite_p: float = 0.35          # paste a teacher-cut subject from another photo
    fg_scale: tuple = (0.3, 0.95)      # pasted subject's long side, fraction of the output side
    bg_blur_p: float = 0.25            # defocus the background before pasting
    pattern_p: float = 0.0             # of the composites: paste onto a tiled pattern instead of a photo
    print_p: float = 0.0               # of all photos: a tiled print over the subject's lower part
    gray_p: float = 0.05
    jitter: float = 0.3                # brightness / contrast / saturation strength
    noise_p: float = 0.2


class BatchAugmenter:
    """Random crops, flips, colour jitter and composites, a whole batch per tensor op.

    Why batched: photo by photo, each augmented photo took ~25 small ops (9 ms on a CPU core; on a
    GPU, launches and syncs capped a run at ~270 photos/s). Here a batch is a handful of ops:
    the B photos are padded into one tensor, and every crop, flip, resize and paste is one affine
    `grid_sample`. Random draws come from one CPU generator, so a GPU run makes the same choices as
    a CPU run with the same seed.
    """

    def __init__(self, samples, cfg: AugmentConfig, mean, std, seed: int = 0, device="cpu", weights=None):
        """samples: (image, alpha) uint8 tensors, already on `device`; weights: how often each is drawn
        relative to the others (None: all alike), e.g. to show a small set of the photos that matter
        most (portraits, for a selfie app) more often without copying them."""
        self.samples = samples
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.cfg = cfg
        self.device = torch.device(device)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(std).view(1, 3, 1, 1).to(self.device)
        self.g = torch.Generator().manual_seed(seed)
        self.sizes = torch.tensor([im.shape[1:] for im, _ in samples], dtype=torch.float32)  # (N, 2) h, w
        self.boxes, self.cutouts = self._subject_boxes()

    def _subject_boxes(self):
        """Each photo's subject box (alpha > 127, 4 px margin) as x0, y0, x1, y1; the photos with a
        subject of at least 8x8 px are the ones pasted as foregrounds."""
        boxes, ok = torch.zeros(len(self.samples), 4), []
        for i, (_, al) in enumerate(self.samples):
            fg = al[0] > 127
            rows, cols = fg.any(1).nonzero().flatten().cpu(), fg.any(0).nonzero().flatten().cpu()
            if len(rows) >= 8 and len(cols) >= 8:
                h, w = al.shape[1:]
                boxes[i] = torch.tensor([max(0, int(cols[0]) - 4), max(0, int(rows[0]) - 4),
                                         min(w, int(cols[-1]) + 5), min(h, int(rows[-1]) + 5)], dtype=torch.float32)
                ok.append(i)
        return boxes, torch.tensor(ok or list(range(len(self.samples))))

    def _u(self, lo=0.0, hi=1.0, n=()):
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _gather(self, idx):
        """The photos idx as one (B, 4, H, W) float tensor in [0, 1], zero-padded to the largest."""
        h, w = (int(v) for v in self.sizes[idx].max(0).values)
        out = torch.zeros(len(idx), 4, h, w, dtype=torch.uint8, device=self.device)
        for k, i in enumerate(idx.tolist()):
            im, al = self.samples[i]
            out[k, :3, :im.shape[1], :im.shape[2]] = im
            out[k, 3:, :al.shape[1], :al.shape[2]] = al
        return out.float().div_(255)

    def _sample(self, src, x0, y0, cw, ch, flip, size: int):
        """Resample each src[b]'s box (x0, y0, cw, ch in pixels) onto a size x size output, mirrored
        where flip; bilinear, half-pixel centres (as F.interpolate)."""
        b, _, h, w = src.shape
        sx, sy = cw / w, ch / h
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -sx, sx)
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta.to(self.device), [b, 4, size, size], align_corners=False)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _crops(self, idx, size: int):
        """Random-resized crops (area and aspect jitter, clamped to the photo) and flips."""
        b, c = len(idx), self.cfg
        h, w = self.sizes[idx, 0], self.sizes[idx, 1]
        area = h * w * self._u(*c.crop_scale, n=(b,))
        ratio = torch.exp(self._u(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]), n=(b,)))
        cw = torch.minimum((area * ratio).sqrt(), w)
        ch = torch.minimum((area / ratio).sqrt(), h)
        x0, y0 = self._u(n=(b,)) * (w - cw), self._u(n=(b,)) * (h - ch)
        flip = self._u(n=(b,)) < 0.5
        out = self._sample(self._gather(idx), x0, y0, cw, ch, flip, size)
        return out[:, :3], out[:, 3:]

    def _foregrounds(self, b: int, size: int):
        """Whole teacher-cut subjects (their alpha's box; pasting random crops instead gave subjects
        with straight cut edges no photo has), each scaled to a random size and placed at random.
        Alpha is zero outside the pasted box. Shrinking by more than 2x samples a 2x box-filtered
        copy, so small pastes do not alias."""
        c = self.cfg
        idx = self.cutouts[torch.randint(len(self.cutouts), (b,), generator=self.g)]
        bx0, by0, bx1, by1 = self.boxes[idx].unbind(1)
        bw, bh = bx1 - bx0, by1 - by0
        scale = size * self._u(*c.fg_scale, n=(b,)) / torch.maximum(bw, bh)
        fw, fh = (bw * scale).clamp(8, size), (bh * scale).clamp(8, size)
        ox, oy = self._u(n=(b,)) * (size - fw), self._u(n=(b,)) * (size - fh)
        flip = self._u(n=(b,)) < 0.5
        # The output window [0, size) maps to a source window around the subject's box.
        cw, ch = size * bw / fw, size * bh / fh
        x0 = torch.where(flip, bx1 - (size - ox) * bw / fw, bx0 - ox * bw / fw)
        y0 = by0 - oy * bh / fh
        src = self._gather(idx)
        out = torch.empty(b, 4, size, size, device=self.device)
        shrunk = bw / fw > 2
        for group, f in ((~shrunk, 1), (shrunk, 2)):
            g = group.nonzero().flatten()
            if len(g):
                gs = g.to(self.device)
                img = src[gs] if f == 1 else F.avg_pool2d(src[gs], 2, ceil_mode=True)
                out[gs] = self._sample(img, x0[g] / f, y0[g] / f, cw[g] / f, ch[g] / f, flip[g], size)
        pos = torch.arange(size, dtype=torch.float32) + 0.5
        inside_x = (pos[None] >= ox[:, None]) & (pos[None] < (ox + fw)[:, None])   # (B, size)
        inside_y = (pos[None] >= oy[:, None]) & (pos[None] < (oy + fh)[:, None])
        inside = (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(self.device)
        return out[:, :3], out[:, 3:] * inside

    def _patterns(self, b: int, size: int, repeats=(2, 6)):
        """Backgrounds that repeat a random photo crop 2-6 times across and down, like wrapping paper,
        printed fabric or wallpaper. Why: students pasted objects on such prints into the background
        (a banana on a rose print, scissors on an apple print) where the teacher cut them cleanly; a
        print is background however salient its motifs, so the alpha under it is zero."""
        k = int(torch.randint(repeats[0], repeats[1] + 1, (1,), generator=self.g))
        tile = -(-size // k)
        t, _ = self._crops(torch.randint(len(self.samples), (b,), generator=self.g), tile)
        return t.repeat(1, 1, k, k)[:, :, :size, :size]

    def _printed(self, x, y, which):
        """Lay a finely tiled print (as in `_patterns`) over the subjects of the photos marked in `which` (B,),
        from a random height (25-75% of the crop) down, blended by their alpha, which stays as it was.

        Why: every student cut patterned clothing out of portraits (a dotted blouse, a paisley scarf,
        a floral shirt: IoU 0.50-0.83 where MediaPipe Selfie scored 0.87-0.99), the students trained
        before `pattern_p` existed too. A print is background only where it is behind the subject;
        inside the subject's outline, as a shirt or a scarf, it is subject, and the photos alone rarely
        show that. The print keeps the photo's shading (scaled by its blurred luminance), so folds stay.
        Measured at print_p 0.25 (README, "Where the default loses to MediaPipe on portraits"): it fixed
        printed clothing and lost some plain clothing, a trade; no shipped model uses it yet."""
        sel = which.nonzero().flatten()
        if not len(sel):
            return x
        on, size = sel.to(self.device), x.shape[-1]
        pat = self._patterns(len(sel), size, repeats=(4, 12))   # n,3,S,S: fabric motifs are small
        top = self._u(0.25, 0.75, n=(len(sel),))
        rows = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        band = (rows[None] >= top[:, None]).float()[:, None, :, None].to(self.device)   # n,1,S,1
        photos = x[on]                                                        # n,3,S,S (a copy: indexed)
        lum = F.avg_pool2d(photos.mean(1, keepdim=True), 9, 1, 4, count_include_pad=False)
        m = y[on] * band                                                      # n,1,S,S: where the print goes
        mean_lum = (lum * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1e-6)
        shade = (lum / mean_lum.clamp_min(0.05)).clamp(0.3, 1.5)             # the photo's folds and light
        x[on] = photos * (1 - m) + (pat * shade).clamp(0, 1) * m
        return x

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
        noisy = (self._u(n=(b,)) < self.cfg.noise_p).nonzero().flatten()
        if len(noisy):
            x[noisy.to(dev)] += torch.randn((len(noisy), *x.shape[1:]), generator=self.g).to(dev) * 0.03
        return x.clamp(0, 1)

    def _defocus(self, x, which):
        """Box-blur the backgrounds marked in `which` (B,) with a random 3, 5 or 7 px kernel."""
        k = 2 * torch.randint(3, (x.shape[0],), generator=self.g) + 3
        for size in (3, 5, 7):
            sel = (which & (k == size)).nonzero().flatten().to(self.device)
            if len(sel):
                x[sel] = F.avg_pool2d(x[sel], size, 1, size // 2, count_include_pad=False)
        return x

    def batch(self, batch_size: int):
        """-> normalised images B,3,S,S and alphas B,1,S,S in [0,1]."""
        size, c = self.cfg.size, self.cfg
        if self.weights is None:
            idx = torch.randint(len(self.samples), (batch_size,), generator=self.g)
        else:
            idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=self.g)
        x, y = self._crops(idx, size)
        if c.print_p:
            x = self._printed(x, y, self._u(n=(batch_size,)) < c.print_p)
        comp = self._u(n=(batch_size,)) < c.composite_p
        blur = self._u(n=(batch_size,)) < c.bg_blur_p
        sel = comp.nonzero().flatten()
        if len(sel):
            # Pasted subjects: the new alpha is the union of both, as the teacher marks every salient object.
            on = sel.to(self.device)
            bg, bg_alpha = x[on], y[on]
            if c.pattern_p:
                pat = (self._u(n=(len(sel),)) < c.pattern_p).nonzero().flatten().to(self.device)
                if len(pat):
                    bg[pat], bg_alpha[pat] = self._patterns(len(pat), size), 0
            bg = self._defocus(bg, blur[sel])
            fg, fa = self._foregrounds(len(sel), size)
            x[on] = self._jitter(fg) * fa + bg * (1 - fa)
            y[on] = fa + (1 - fa) * bg_alpha
        x = self._jitter(x)
        return (x - self.mean) / self.std, y.clamp(0, 1)


class AugmentStream(torch.utils.data.IterableDataset):
    """Endless augmented batches for a DataLoader: each worker process draws its own seeded stream.

    Why: on a GPU the step takes a few ms and one Python augmenter becomes the bottleneck; with
    forked workers the photos stay shared in memory and batches arrive pinned, ready to copy.
    Worker k uses seed + 7919 k, so a run with a fixed worker count is reproducible.
    """

    def __init__(self, samples, cfg: AugmentConfig, mean, std, batch_size: int, seed: int = 0, device="cpu",
                 weights=None):
        self.samples, self.cfg, self.mean, self.std = samples, cfg, mean, std
        self.batch_size, self.seed, self.device, self.weights = batch_size, seed, device, weights

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        if info:
            torch.set_num_threads(1)  # many workers, one core each
        aug = BatchAugmenter(self.samples, self.cfg, self.mean, self.std, seed=self.seed + 7919 * wid,
                             device=self.device, weights=self.weights)
        while True:
            yield aug.batch(self.batch_size)


def batch_stream(samples, cfg: AugmentConfig, mean, std, batch_size: int, seed: int = 0,
                 workers: int = 0, device="cpu", weights=None):
    """An endless iterator of (x, y) batches.

    workers == 0: augmented in the training process on `device` (the photos are moved there): on a
    2-core CPU that leaves the cores to the step, on a GPU it is the fastest (~1 GB of photos fits,
    and the per-photo ops run as small kernels). workers > 0: CPU worker processes, batches pinned
    for a quick copy to a GPU."""
    device = torch.device(device)
    if workers <= 0:
        if device.type != "cpu":
            samples = [(im.to(device), al.to(device)) for im, al in samples]
        return iter(AugmentStream(samples, cfg, mean, std, batch_size, seed, device, weights))
    stream = AugmentStream(samples, cfg, mean, std, batch_size, seed, weights=weights)
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
