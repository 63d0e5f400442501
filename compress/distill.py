"""Distillation training loop: student learns the teacher's soft alpha (or human masks).

Resumable by design: every `ckpt_every` steps the model, optimiser, schedule and RNG state go
to `<out>/last.pt` atomically, so a stopped run loses at most that many steps. The log is JSON
lines (`<out>/log.jsonl`): training loss parts and, every `eval_every` steps, IoU/MAE against the
teacher on a held-out split that never trains, to watch over-fitting.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..models.student import count_macs, count_params, create_student
from ..models.variants import get_variant
from .data import (
    AugmentConfig,
    batch_stream,
    eval_tensors,
    find_pairs,
    load_pairs,
    set_weights,
    split_pairs,
)
from ..runtime.errors import EdgecutError
from ..runtime.imageio import write_text_atomic
from .loaders import load_checkpoint, student_from
from .losses import distill_loss


@dataclass
class TrainConfig:
    variant: str = "edgecut-small"
    data: str = "../shared/data/train"
    sets: tuple = ()                 # empty: every set with alphas
    label_roots: tuple = ()          # extra <root>/<set>/teacher folders (from `edgecut label`)
    exclude: tuple = ()              # photo file names never to train on (the repo's samples/)
    out: str = "runs/distill/edgecut-small"
    steps: int = 20000
    minutes: float = 0.0             # > 0: fit the run into this many minutes (sets `steps` after a short probe)
    set_weights: dict = field(default_factory=dict)  # {set: w}: draw that set's photos w times as often
    batch_size: int = 0              # 0: batch_size_for(device): 16 on CPU, 128 on a GPU
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 300
    holdout: float = 0.03
    eval_every: int = 500
    ckpt_every: int = 250
    seed: int = 0
    threads: int = 0                 # 0: torch's default
    device: str = "auto"             # auto: cuda when torch sees a GPU, else cpu
    workers: int = 0                 # augmentation worker processes (0: in the training process)
    init: str = ""                   # start from these weights (a best.pt/last.pt), e.g. a second cycle
    input_size: int = 0              # > 0: train at this square size instead of the variant's
    qat: bool = False                # fake-quantize as onnxruntime int8 will (compress/qat.py)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 1% of the peak."""
    import math

    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for --device: a name that is no device is a usage error (exit 2); a device
    this machine lacks is an EdgecutError (exit 1), as a missing file is."""
    from ..runtime.errors import EdgecutError, UsageError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {name}: not a torch device (auto, cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgecutError(f"--device {name}: torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgecutError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EdgecutError(f"--device {name}: torch sees no MPS device")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    return device


def batch_size_for(device: torch.device, asked: int = 0) -> int:
    """The batch size asked for, else one that suits the device: 16 keeps two CPU cores busy, while a
    GPU at 16 waits on kernel launches (on an H200, three runs side by side at 16 made 160-180 photos/s
    each; one run at 128 made 2,300)."""
    return asked or (128 if device.type == "cuda" else 16)


def alpha_scores(p, t):
    """Per-image IoU (alpha >= 0.5, as the benchmark scores it; 1 when both are empty) and MAE of
    alphas p against targets t, both B,1,H,W."""
    pb, tb = p >= 0.5, t >= 0.5
    inter = (pb & tb).sum((1, 2, 3)).float()
    union = (pb | tb).sum((1, 2, 3)).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return iou, (p - t).abs().mean((1, 2, 3))


@torch.no_grad()
def evaluate(model, x, y, batch: int = 32) -> dict:
    model.eval()
    device = next(model.parameters()).device
    ious, maes = [], []
    for i in range(0, len(x), batch):
        iou, mae = alpha_scores(model(x[i:i + batch].to(device)), y[i:i + batch].to(device))
        ious.append(iou)
        maes.append(mae)
    model.train()
    return {"iou": float(torch.cat(ious).mean()), "mae": float(torch.cat(maes).mean())}


def _save_atomic(obj, path: Path):
    """A checkpoint is last.pt or best.pt of a run that may be resumed: a full disk must leave the
    previous file whole (and no half-written .tmp beside it), and say so in one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:   # torch's zip writer raises RuntimeError on a full disk
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise EdgecutError(f"{path}: cannot write ({reason})") from None


def _check_finite(diverged_at: int, model, step: int, lr: float) -> None:
    """Stop a run whose loss or weights stopped being finite (too high a --lr), before it saves: a
    best.pt of NaN weights would export to a model that cuts out nothing."""
    if not diverged_at and bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        return   # one wait on the device for all the weights
    when = f"loss became NaN or inf at step {diverged_at}" if diverged_at else f"weights became NaN or inf by step {step}"
    raise EdgecutError(f"{when} (the run diverged; nothing saved from then on); lower --lr (now {lr:g})")


def training_pairs(cfg: TrainConfig) -> list:
    """The (photo, alpha) pairs a run trains on; a --sets name with no set under --data, or no pair
    at all, is an EdgecutError naming what is missing."""
    root = Path(cfg.data)
    if cfg.sets:
        have = {p.name for p in root.iterdir() if (p / "images").is_dir()} if root.is_dir() else set()
        missing = [s for s in cfg.sets if s not in have]
        if missing:
            raise EdgecutError(f"--sets {','.join(missing)}: no such set under {root} "
                               f"(sets there: {', '.join(sorted(have)) or 'none'})")
    pairs = find_pairs(cfg.data, set(cfg.sets) or None, cfg.label_roots, cfg.exclude)
    if not pairs:
        raise EdgecutError(f"{root}: no (photo, alpha) pairs (expected <set>/images with <set>/teacher or "
                           f"<set>/masks alphas)")
    return pairs


def _drop_log_after(path: Path, step: int) -> None:
    """Keep the log's lines up to `step`: an interrupted run logged steps past its last checkpoint,
    and a resume logs them again, so a plot of the log drew those steps twice."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return
    def at(line):
        try:
            return json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            return 0      # a line that is no record is kept as it was
    # a half-written last line (a kill mid-write) has no newline: it goes too
    kept = [line for line in lines if line.endswith("\n") and at(line) <= step]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(kept))


def _held_fraction(out: Path):
    """The --holdout a run in `out` was started with (its config.json), or None where unknown."""
    try:
        value = json.loads((out / "config.json").read_text(encoding="utf-8")).get("holdout")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the best checkpoint by held-out IoU."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    scfg = get_variant(cfg.variant)
    if cfg.input_size:
        scfg = replace(scfg, input_size=cfg.input_size)
    cfg.augment.size = scfg.input_size

    pairs = training_pairs(cfg)
    train_pairs, held_pairs = split_pairs(pairs, cfg.holdout)
    if not train_pairs:
        raise EdgecutError(f"--holdout {cfg.holdout:g}: all {len(pairs)} photos went to the held-out split, "
                           f"none is left to train on; lower --holdout")
    try:
        set_weights(train_pairs, cfg.set_weights)
    except ValueError as e:   # a set with no photos
        raise EdgecutError(f"--set-weight: {e}") from None
    device = pick_device(cfg.device)
    cfg.batch_size = batch_size_for(device, cfg.batch_size)

    last = out / "last.pt"
    start = last if last.exists() else (Path(cfg.init) if cfg.init else None)
    ck = load_checkpoint(start) if start else None
    if start == last:
        if "opt" not in ck or "step" not in ck:
            raise EdgecutError(f"{last}: not a distill run's last.pt (no optimiser state); pass another --out")
        if ck["variant"] != cfg.variant:
            raise EdgecutError(f"{last}: checkpoint is for another variant ({ck['variant']}, not {cfg.variant}); "
                               f"pass another --out or the same --variant")
        trained = ck.get("input_size") or get_variant(ck["variant"]).input_size
        if trained != scfg.input_size:   # resuming would go on at the new size under the old schedule
            raise EdgecutError(f"{last}: the run trains at {trained} px, not {scfg.input_size}; pass the same "
                               f"--input-size to resume it, or another --out with --init {last} to fine-tune")
        ran = _held_fraction(out)
        if ran is not None and ran != cfg.holdout:
            # the split is stable per photo for one fraction; another one moves trained-on photos into
            # the held-out split (or empties it), and best.pt would be chosen on them
            raise EdgecutError(f"{last}: the run holds out --holdout {ran:g} of its photos, not {cfg.holdout:g}; "
                               f"pass the same --holdout to resume it, or another --out with --init {last}")
        steps = ck.get("steps") or cfg.steps   # a time-budgeted run keeps its own (see below)
        if ck["step"] >= steps and not (out / "best.pt").is_file():
            # an interrupted run resumed with fewer --steps: the loop would not run and no best.pt be saved
            raise EdgecutError(f"{last}: already at step {ck['step']}, past --steps {steps}, and no best.pt "
                               f"saved yet; pass a larger --steps to train on")
    hint = ("pass another --out or the same --variant" if start == last
            else "--init takes a checkpoint of the same --variant (or a pruned one)")
    write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
    write_text_atomic(out / "split.json", json.dumps({
        "train": len(train_pairs), "holdout": [f"{p.set}/{p.image.name}" for p in held_pairs],
        "sets": sorted({p.set for p in pairs})}, indent=1))

    # A pruned checkpoint (`edgecut compress prune`) carries its own channel counts: fine-tuning it
    # here gets distill's resume, log and best.pt for the long recovery after pruning.
    pruned = ck.get("pruned") if ck else None
    model = student_from(ck, start, scfg, hint) if ck else create_student(scfg)
    model = model.to(device, memory_format=torch.channels_last)  # ~1.3x faster on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best = 0, -1.0
    aug_seed = cfg.seed
    budget_probe = cfg.minutes > 0
    if budget_probe:
        cfg.steps = 10**9  # fixed after the probe below
    if start == last:
        try:
            opt.load_state_dict(ck["opt"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise EdgecutError(f"{last}: checkpoint is for another variant/shape (optimiser state: {e}); "
                               f"pass another --out or the same --variant") from None
        step, best = ck["step"], ck.get("best", -1.0)
        if ck.get("steps"):  # a time-budgeted run keeps the step count it fixed, so the schedule resumes
            cfg.steps, budget_probe = ck["steps"], False
        aug_seed = cfg.seed + step  # a fresh but reproducible augmentation stream after resume
        print(f"resumed from {last} at step {step}")
    elif ck:
        print(f"initialised from {cfg.init}" + (" (pruned)" if pruned else ""))
    extra = {"pruned": pruned} if pruned else {}
    if cfg.input_size:
        extra["input_size"] = cfg.input_size
    if cfg.qat:
        extra["qat"] = True

    train_pairs, samples = load_pairs(train_pairs, progress=progress)
    if not samples:
        raise EdgecutError(f"no usable (photo, alpha) pairs under {cfg.data}: every training photo was unreadable")
    try:
        weights = set_weights(train_pairs, cfg.set_weights)
    except ValueError as e:   # every photo of a weighted set was unreadable
        raise EdgecutError(f"--set-weight: {e}") from None
    held_pairs, held = load_pairs(held_pairs, progress=False)
    if held:
        ex, ey = eval_tensors(held, scfg.input_size, scfg.mean, scfg.std)
    else:  # too few photos for a held-out split: "best" is simply the latest
        print("warning: no held-out photos (raise --holdout or add photos); best.pt = latest")
    batches = batch_stream(samples, cfg.augment, scfg.mean, scfg.std, cfg.batch_size, seed=aug_seed,
                           workers=cfg.workers, device=device, weights=weights)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"{cfg.variant}{' (QAT)' if cfg.qat else ''} at {scfg.input_size} px on {device}, batch {cfg.batch_size}: {count_params(model):,} params, {count_macs(model, scfg.input_size)/1e6:.0f}M MACs; "
          f"{len(train_pairs)} train / {len(held_pairs)} held-out photos from {len({p.set for p in pairs})} sets")

    if cfg.qat:   # after count_macs above: the fake-quant forwards bypass the conv hooks it counts with
        from . import qat

        qat.enable(model)
    if start == last:   # steps logged after the checkpoint resumed from are run again
        _drop_log_after(out / "log.jsonl", step)
    log = open(out / "log.jsonl", "a")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=None if budget_probe else cfg.steps, initial=step, desc="distill", unit="step")
    model.train()
    t0, seen, first = time.time(), 0, step
    # The first step whose loss was NaN or infinite (0: none), kept on the device so that a GPU run
    # does not wait on it every step; read before every save and log line (a diverged run stops there).
    diverged = torch.zeros((), dtype=torch.long, device=device)
    t_probe = None  # --minutes: steps/s is timed from step first+20 (past start-up) ...
    while step < cfg.steps:
        now = time.time()
        if budget_probe and step == first + 20:
            t_probe = now
        elif t_probe and budget_probe and (step >= first + 300 or now - t0 > cfg.minutes * 6):
            # ... to step first+300 or a tenth of the budget, then the cosine schedule gets its length
            rate = (step - first - 20) / (now - t_probe)
            cfg.steps, budget_probe = step + max(1, int(rate * (cfg.minutes * 60 - (now - t0)))), False
            print(f"--minutes {cfg.minutes:g}: {rate:.2f} steps/s, so {cfg.steps} steps in all")
            if bar:
                bar.total = cfg.steps
        elif cfg.minutes and now - t0 > cfg.minutes * 66 and step + 1 < cfg.steps:
            cfg.steps = step + 1  # 10% over budget (slower than probed): finish with a last eval and save
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x, y = next(batches)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        loss, parts = distill_loss(model.forward_logits(x), y)
        diverged = torch.where((diverged == 0) & ~torch.isfinite(loss.detach()), step + 1, diverged)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(x)
        logging = step % 20 == 0 or step % cfg.eval_every == 0 or step == cfg.steps
        saving = step % cfg.eval_every == 0 or step % cfg.ckpt_every == 0 or step == cfg.steps
        if logging or saving:
            _check_finite(int(diverged), model, step, cfg.lr)
        rec = {}
        if logging:  # .item() waits for the GPU: only on the steps that log
            rec = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                   "lr": opt.param_groups[0]["lr"], "img_s": seen / (time.time() - t0)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            rec["holdout"] = evaluate(model, ex, ey) if held else {"iou": float("nan"), "mae": float("nan")}
            if not held or rec["holdout"]["iou"] > best:
                best = rec["holdout"]["iou"] if held else best
                _save_atomic({"model": model.state_dict(), "variant": cfg.variant, "step": step,
                              "holdout": rec["holdout"], **extra}, out / "best.pt")
        if logging:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            _save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                          "steps": cfg.steps if cfg.minutes else None, "variant": cfg.variant, **extra}, last)
        if bar:
            bar.update(1)
        if bar and logging:
            post = {"loss": f"{rec['loss']:.3f}", "img/s": f"{rec['img_s']:.1f}"}
            if "holdout" in rec:
                post["held_iou"] = f"{rec['holdout']['iou']:.3f}"
            bar.set_postfix(post, refresh=False)
    if bar:
        bar.close()
    log.close()
    return out / "best.pt"
